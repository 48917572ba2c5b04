"""Sampling speed: `rnnlm.sample.generate` against the plain token-by-token loop, same weights, one run.

The plain side is the generation loop of pytorch/examples' word_language_model: under no_grad, feed
one token, take the decoder's logits, exponentiate them divided by the temperature, draw one id with
torch.multinomial, feed it back. rnnlm's side is `generate` (inference_mode, the model's one-step function
`model.stepper()`, which runs torch's one-step kernels and hands the sampler the logits, and its
inverse-CDF sampler): one sample, one sample from bf16 weights, then several drawn together as one batch.
Each rnnlm round is one `generate` call, set-up included (the stepper's copies of the weights, the warm
start and the prompt), as `rnnlm sample` runs it.

Reading one token costs reading every weight of the recurrent stack and of the decoder once (the
embedding contributes one row), so a single stream cannot beat read bandwidth / those bytes. The
script measures the read bandwidth of this machine twice, summing a 512 MB tensor (memory) and a
tensor the size of the weights (which the caches may hold: a 2x200 PTB model's 10.6 MB fit in a 32 MB
L3), takes the higher as the bound and prints the fraction of it each side reaches. A batch of
samples reads the weights once per step for all of them.

    RNNLM_DATA=/work/shared/corpora python scripts/bench_sample.py                 # PTB vocabulary
    python scripts/bench_sample.py --vocab-size 33278                               # WikiText-2's size
    python scripts/bench_sample.py --checkpoint runs/ptb-small/best.pt --tokens 400
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from bench import PlainLM  # the plain side of scripts/bench.py (this folder is on the path when run)


def plain_from(model) -> PlainLM:
    """The plain model holding exactly rnnlm's weights (the fused stack uses nn.LSTM's parameter names)."""
    c = model.config
    plain = PlainLM(model.vocab_size, c.hidden_size, c.num_layers, embed_size=c.embed_size)
    state = {("encoder." + k[len("embedding."):] if k.startswith("embedding.") else k): v
             for k, v in model.state_dict().items()}
    plain.load_state_dict(state)
    return plain.eval()


clock = time.perf_counter  # or time.process_time with --clock cpu (set in main)
restrict: dict = {}  # rnnlm's top_k and top_p (set in main); the plain loop always draws from the whole softmax


def plain_sample(plain: PlainLM, tokens: int, temperature: float, seed: int) -> float:
    """The example's loop; returns seconds for `tokens` draws (the model's logits: (1, V) per token)."""
    torch.manual_seed(seed)
    layers, hidden_size = plain.rnn.num_layers, plain.rnn.hidden_size
    hidden = (torch.zeros(layers, 1, hidden_size), torch.zeros(layers, 1, hidden_size))
    token = torch.zeros(1, 1, dtype=torch.long)
    begin = clock()
    with torch.no_grad():
        for _ in range(tokens):
            output, hidden = plain(token, hidden)
            weights = output.squeeze().div(temperature).exp()
            token.fill_(torch.multinomial(weights, 1)[0])
    return clock() - begin


def rnnlm_sample(model, tokenizer, tokens: int, samples: int, temperature: float, seed: int,
                 weights: torch.dtype | None = None, native: bool = True) -> float:
    """Seconds of one `generate` call; `native` False draws through torch (RNNLM_NATIVE=0), not rnnlm/native's C."""
    from rnnlm.sample import generate

    os.environ["RNNLM_NATIVE"] = "1" if native else "0"
    begin = clock()
    generate(model, tokenizer, length=tokens, temperature=temperature, num_samples=samples, seed=seed,
             weights=weights, **restrict)
    return clock() - begin


def read_bandwidth(megabytes: float = 512, rounds: int = 5) -> float:
    """Best bytes/s of summing a float32 tensor of this size: 512 MB is too large for any cache (the
    memory's bandwidth); the size of a model's weights is what one generation step reads (from the
    caches, when they hold it)."""
    data = torch.ones(int(megabytes * 2 ** 20) // 4)
    data.sum()
    repeat = max(1, int(512 // megabytes))  # ~512 MB read per timing, however small the tensor
    best = 0.0
    for _ in range(rounds):
        tick = clock()
        for _ in range(repeat):
            data.sum()
        best = max(best, repeat * data.numel() * 4 / (clock() - tick))
    return best


def load(args):
    from rnnlm.checkpoint import load_model

    if args.checkpoint:
        loaded = load_model(args.checkpoint, "cpu")
        return loaded.model, loaded.tokenizer
    from rnnlm.config import load_config
    from rnnlm.data.corpus import load_corpus
    from rnnlm.models import build_model

    config = load_config(None, ["data.corpus=ptb", "tokenizer.kind=word", "model.cell=lstm", "model.num_layers=2",
                                "model.embed_size=200", "model.hidden_size=200", "model.dropout=0"])
    if args.vocab_size:  # made-up words w0, w1, ...: speed does not depend on which words they are
        from rnnlm.data.tokenizers import WordVocabBuilder

        builder = WordVocabBuilder()
        builder.add(" ".join(f"w{i}" for i in range(args.vocab_size - 2)) + "\n")  # + <eos> and <unk>
        tokenizer = builder.build()
    else:
        tokenizer = load_corpus(config.data, config.tokenizer, splits=("valid",)).tokenizer
    return build_model(tokenizer.vocab_size, config.model).eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="an rnnlm word-LSTM checkpoint (default: a fresh 2x200 PTB model)")
    parser.add_argument("--vocab-size", type=int, default=0,
                        help="a fresh 2x200 model with this many words instead of PTB's (e.g. 33278, as WikiText-2)")
    parser.add_argument("--tokens", type=int, default=300, help="tokens per sample and round")
    parser.add_argument("--batch", type=int, default=16, help="samples drawn together in the batched rnnlm rounds")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per side, after one warm-up")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="rnnlm's sides only (the plain loop has none)")
    parser.add_argument("--top-p", type=float, default=1.0, help="rnnlm's sides only (the plain loop has none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: time by this process's CPU seconds, for a machine shared with other jobs (with "
                             "--threads 1, so that CPU seconds are the wall clock of a quiet machine)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    restrict.update(top_k=args.top_k, top_p=args.top_p)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            parser.error("--clock cpu needs --threads 1 (CPU seconds of several threads add up)")
        global clock
        clock = time.process_time
    if args.checkpoint and args.vocab_size:
        parser.error("--vocab-size makes a fresh model: give it or --checkpoint, not both")
    try:
        model, tokenizer = load(args)
    except Exception as exc:  # noqa: BLE001  (the rnnlm error says what is wrong; no traceback for a script user)
        sys.exit(f"Error: {exc}")
    if model.config.cell != "lstm" or model.config.bidirectional or model.config.output_size:
        sys.exit("Error: the plain loop is an nn.LSTM model: give a unidirectional LSTM checkpoint without output_size")
    plain = plain_from(model)
    weight_bytes = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                       if not name.startswith("embedding.")) + model.embedding.weight[0].numel() * 4
    sides = {"plain (1 sample)": lambda seed: args.tokens / plain_sample(plain, args.tokens, args.temperature, seed),
             "rnnlm (1 sample)": lambda seed: args.tokens / rnnlm_sample(model, tokenizer, args.tokens, 1,
                                                                         args.temperature, seed),
             "rnnlm through torch (1 sample)": lambda seed: args.tokens / rnnlm_sample(
                 model, tokenizer, args.tokens, 1, args.temperature, seed, native=False),
             "rnnlm bf16 (1 sample)": lambda seed: args.tokens / rnnlm_sample(
                 model, tokenizer, args.tokens, 1, args.temperature, seed, torch.bfloat16),
             f"rnnlm ({args.batch} samples)": lambda seed: args.batch * args.tokens / rnnlm_sample(
                 model, tokenizer, args.tokens, args.batch, args.temperature, seed),
             f"rnnlm through torch ({args.batch} samples)": lambda seed: args.batch * args.tokens / rnnlm_sample(
                 model, tokenizer, args.tokens, args.batch, args.temperature, seed, native=False)}
    from rnnlm import native

    print(f"rnnlm/native: {native.why_not() or 'compiled'}", file=sys.stderr)
    speeds: dict[str, list[float]] = {name: [] for name in sides}
    for index in range(args.rounds + 1):  # round 0 warms up and is not counted
        for name, measure in sides.items():
            speed = measure(index)
            if index:
                speeds[name].append(speed)
    memory = read_bandwidth()
    bandwidth = max(memory, read_bandwidth(weight_bytes / 2 ** 20))  # the weights may stay in the caches
    bound = bandwidth / weight_bytes  # tokens/s of one stream that only reads the weights
    report = {"vocab_size": model.vocab_size, "parameters": model.num_parameters(),
              "weight_bytes_per_step": weight_bytes,
              "read_bandwidth_gb_s": bandwidth / 1e9,
              "memory_bandwidth_gb_s": memory / 1e9, "one_stream_bound_tokens_per_sec": bound,
              "threads": torch.get_num_threads(), "clock": args.clock, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "tokens_per_sec": {name: statistics.median(values) for name, values in speeds.items()}}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    baseline = report["tokens_per_sec"]["plain (1 sample)"]
    print(f"vocabulary {model.vocab_size:,} | {model.num_parameters():,} parameters | {weight_bytes / 1e6:.1f} MB of "
          f"weights read per step | read bandwidth {bandwidth / 1e9:.1f} GB/s at that size ({memory / 1e9:.1f} from "
          f"memory) | one-stream bound "
          f"{bound:,.0f} tokens/s | {torch.get_num_threads()} threads")
    for name, speed in report["tokens_per_sec"].items():
        streams = args.batch if "samples" in name else 1
        halved = 2 if "bf16" in name else 1  # bf16 weights: half the bytes per step
        print(f"{name:<36}{speed:>10,.0f} tokens/s  {speed / baseline:5.2f}x plain  "
              f"{speed / (bound * streams * halved):6.1%} of its bandwidth bound")


if __name__ == "__main__":
    main()
