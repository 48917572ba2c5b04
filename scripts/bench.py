"""Training throughput of rnnlm against a minimal plain-PyTorch loop: same model, same token ids, one run.

Each side trains in its own worker process (so each has its own peak memory), and the two take turns:
one warm-up round each, then rnnlm, plain, rnnlm, plain, ... The rnnlm side runs the real `Trainer`
and reports `TrainSummary.tokens / TrainSummary.train_seconds` (training steps only); the plain side is
the loop of pytorch/examples' word_language_model as a competent user writes it (embedding, fused
LSTM, linear decoder; dropout on the embeddings, between the layers (nn.LSTM's own) and on the LSTM's
output; mean cross-entropy; torch.optim.SGD with foreach, clip_grad_norm_ with foreach; hidden state
detached between windows), timed from its first step to its last (with torch.cuda.synchronize on CUDA).
Both sides run the same recipe: SGD, dropout 0.2, clipping at 0.25, nothing one side does that the other
does not. Printed: median tokens/s per side, the ratio of
medians (rnnlm / plain; also the ratio of the fastest rounds and the median of per-round ratios, since
a shared machine only ever slows a round down), model FLOP utilisation against a peak fp32 matmul rate
measured in the same run, and peak memory (peak RSS of each worker; on CUDA, max_memory_allocated).

    RNNLM_DATA=/work/shared/corpora python scripts/bench.py --preset all
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# embed_size = hidden_size; dropout 0.2 as word_language_model's, untied, fp32, SGD with clip 0.25 on both sides
PRESETS = {
    "word": dict(corpus="ptb", tokenizer="word", layers=2, hidden=200, bptt=35, batch=20, lr=20.0, dropout=0.2,
                 steps=60),
    "char": dict(corpus="tinyshakespeare", tokenizer="char", layers=2, hidden=512, bptt=128, batch=64, lr=20.0,
                 dropout=0.2, steps=5),
}
CLIP = 0.25
LOG_INTERVAL = 20  # both sides read the loss back to Python this often (rnnlm's train.log_every)


def rnnlm_overrides(spec: dict, steps: int, device: str) -> list[str]:
    return [f"data.corpus={spec['corpus']}", f"data.cache_dir={spec.get('cache_dir', '')}",
            f"tokenizer.kind={spec['tokenizer']}", f"tokenizer.vocab_size={spec.get('vocab_cap', 0)}",
            "model.cell=lstm", f"model.num_layers={spec['layers']}",
            f"model.embed_size={spec['hidden']}", f"model.hidden_size={spec['hidden']}",
            f"model.dropout={spec.get('dropout', 0.0)}", "model.locked_dropout=false", "model.dropout_embedding=0",
            "model.tie_weights=false", f"train.batch_size={spec['batch']}", f"train.bptt={spec['bptt']}",
            f"train.max_steps={steps}", "train.epochs=0",
            # rnnlm's end-of-run validation is untimed; with the training shapes its memory stays under training's
            f"train.eval_batch_size={spec['batch']}", f"train.log_every={LOG_INTERVAL}", f"train.device={device}",
            "train.tensorboard=false",
            "optim.name=sgd", f"optim.lr={spec['lr']}", "optim.momentum=0", f"optim.clip={CLIP}",
            "optim.schedule=constant", *spec.get("overrides", [])]


def load_ids(spec: dict):
    """rnnlm's own corpus loader: the tokenizer and the train/valid ids both sides train on."""
    from rnnlm.config import load_config
    from rnnlm.data.corpus import load_corpus

    config = load_config(None, rnnlm_overrides(spec, 1, "cpu"))
    return load_corpus(config.data, config.tokenizer, splits=("train", "valid"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainLM(nn.Module):
    """pytorch/examples' RNNModel: embedding -> dropout -> nn.LSTM (dropout between layers) -> dropout -> linear
    decoder; dropout 0 leaves it out (nothing runs in its place)."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int, embed_size: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        embed_size = embed_size or hidden_size
        self.encoder = nn.Embedding(vocab_size, embed_size)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.rnn = nn.LSTM(embed_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, inputs, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(inputs)), hidden)  # (T, B, H)
        return self.decoder(self.drop(output)).view(-1, self.decoder.out_features), hidden  # (T*B, V)


def columns(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(T, batch): column j holds the j-th of `batch` equal slices of the stream."""
    return ids[: len(ids) // batch * batch].view(batch, -1).t().contiguous()


def plain_optimizer(model: nn.Module, lr: float) -> torch.optim.SGD:
    """Plain SGD, theta <- theta - lr * grad, as torch.optim's multi-tensor (foreach) kernels do it."""
    return torch.optim.SGD(model.parameters(), lr=lr, foreach=True)


def plain_step(model: PlainLM, criterion: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
               targets: torch.Tensor, hidden: tuple, clip: float, scale: float = 1.0) -> tuple[torch.Tensor, tuple]:
    """One optimizer step of pytorch/examples' loop on one window: (the loss, not read back; the new state).
    `scale` multiplies the mean loss, e.g. by the window's length to sum it over time."""
    # the columns are continuous text, so the state carries over; detaching stops backprop at the window
    hidden = tuple(h.detach() for h in hidden)
    optimizer.zero_grad(set_to_none=True)
    output, hidden = model(inputs, hidden)
    loss = criterion(output, targets)
    if scale != 1.0:
        loss = loss * scale
    loss.backward()
    # keeps one exploding window from wrecking the weights; the optimizer's own list, not a fresh generator
    nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], clip, foreach=True)
    optimizer.step()
    return loss, hidden


def plain_round(spec: dict, ids: torch.Tensor, vocab_size: int, steps: int, device: torch.device) -> dict:
    """Setup (untimed), then `steps` SGD steps over BPTT windows from the start of the stream (timed)."""
    B, bptt, lr = spec["batch"], spec["bptt"], spec["lr"]
    torch.manual_seed(1234)
    data = columns(ids, B).to(device)
    model = PlainLM(vocab_size, spec["hidden"], spec["layers"], dropout=spec.get("dropout", 0.0)).to(device)
    criterion, optimizer = nn.CrossEntropyLoss(), plain_optimizer(model, lr)
    starts = range(0, data.size(0) - 1, bptt)
    synchronize(device)
    begin, tokens = time.perf_counter(), 0
    for step in range(steps):
        i = starts[step % len(starts)]
        if i == 0:  # a new epoch starts from a zero state
            shape = (spec["layers"], B, spec["hidden"])
            hidden = (torch.zeros(shape, device=device), torch.zeros(shape, device=device))
        length = min(bptt, data.size(0) - 1 - i)
        inputs, targets = data[i: i + length], data[i + 1: i + 1 + length].reshape(-1)
        loss, hidden = plain_step(model, criterion, optimizer, inputs, targets, hidden, CLIP)
        tokens += targets.numel()
        if (step + 1) % LOG_INTERVAL == 0:
            loss.item()
    synchronize(device)
    seconds = time.perf_counter() - begin
    params = sum(p.numel() for p in model.parameters())
    return {"tokens": tokens, "seconds": seconds, "parameters": params}


def rnnlm_round(spec: dict, steps: int, device: torch.device) -> dict:
    """The real Trainer for `steps` steps in a throw-away run folder; its validation and saves are not timed."""
    from rnnlm.config import load_config
    from rnnlm.train import Trainer

    config = load_config(None, rnnlm_overrides(spec, steps, str(device)))
    with tempfile.TemporaryDirectory(prefix="rnnlm-bench-") as folder:
        trainer = Trainer(config, Path(folder) / "run", progress=False, log=lambda message: None)
        try:
            trainer.setup()
            summary = trainer.fit()
        finally:
            trainer.close()
    return {"tokens": summary.tokens, "seconds": summary.train_seconds, "parameters": trainer.model.num_parameters()}


def peak_rss_mb() -> float:
    """This process's peak resident set size; VmHWM on Linux, since ru_maxrss survives exec from the parent."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(side: str, spec: dict, device_name: str, clock: str = "wall") -> None:
    """Serve rounds for one side: read a step count per line on stdin, answer one JSON line per round."""
    protocol, sys.stdout = sys.stdout, sys.stderr  # nothing but answers goes to the parent's pipe
    device = torch.device(device_name)
    if clock == "cpu":  # one thread, timed by its CPU seconds: what other jobs on the machine take is not counted
        torch.set_num_threads(1)
        time.perf_counter = time.process_time  # both sides' timers (the Trainer's meter too) read this clock
    importlib.import_module("rnnlm.train")  # both sides hold the same modules when the baseline is taken

    ready_rss = peak_rss_mb()
    if side == "plain":  # its setup: the same ids through rnnlm's loader (the Trainer loads its own)
        corpus = load_ids(spec)
        ids = torch.from_numpy(np.asarray(corpus.splits["train"].ids, dtype=np.int64))
    for line in sys.stdin:
        steps, cpu = int(line), cpu_seconds()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if side == "rnnlm":
            result = rnnlm_round(spec, steps, device)
        else:
            result = plain_round(spec, ids, corpus.tokenizer.vocab_size, steps, device)
        result.update(ready_rss_mb=ready_rss, peak_rss_mb=peak_rss_mb(), cpu_seconds=cpu_seconds() - cpu,
                      cuda_peak_mb=torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None)
        protocol.write(json.dumps(result) + "\n")
        protocol.flush()


def busy_seconds() -> float | None:
    """CPU seconds all processes on this machine (and the hypervisor's steal) have used since boot; Linux only."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def peak_matmul_flops(device: torch.device, seconds: float = 2.0) -> float:
    """Best fp32 FLOP/s of square torch.mm on `device` over a few sizes, timed for about `seconds` in all."""
    sizes = (1024, 2048) if device.type == "cpu" else (4096, 8192)
    repeat = 1 if device.type == "cpu" else 10
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        torch.mm(a, b)
        synchronize(device)
        deadline = time.perf_counter() + seconds / len(sizes)
        while time.perf_counter() < deadline:
            tick = time.perf_counter()
            for _ in range(repeat):
                torch.mm(a, b)
            synchronize(device)
            best = max(best, repeat * 2 * n ** 3 / (time.perf_counter() - tick))
    return best


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def flops_per_token(spec: dict, vocab_size: int) -> float:
    """Training matmul FLOPs per token: 3 x forward (LSTM layer 2*4H*(I+H), decoder 2*H*V)."""
    H = spec["hidden"]
    forward = spec["layers"] * 2 * 4 * H * (H + H) + 2 * H * vocab_size  # I = E = H for every layer
    return 3.0 * forward


def synthetic_corpus(vocab_size: int, folder: Path, train_tokens: int = 400_000, zipf: bool = False) -> None:
    """A word corpus (train.txt, valid.txt) using exactly `vocab_size` ids: vocab_size - 2 words, <eos>, <unk>.
    Words are drawn uniformly, or with `zipf` by Zipf's law (the word of rank r with probability
    proportional to 1 / r), as the words of real text are: the frequent ones then fill an adaptive
    softmax's head as they would."""
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(vocab_size - 2)])
    law = 1.0 / np.arange(1, len(words) + 1) if zipf else np.ones(len(words))
    for name, count in (("train", max(train_tokens, 2 * len(words))), ("valid", 20_000)):
        drawn = rng.choice(len(words), size=count, p=law / law.sum())
        if name == "train":
            drawn[: len(words)] = rng.permutation(len(words))  # every word occurs in training
        lines = [" ".join(words[drawn[i: i + 20]]) for i in range(0, count, 20)]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_preset(name: str, spec: dict, args: argparse.Namespace, device: torch.device) -> dict:
    from rnnlm.errors import RnnlmError

    try:
        corpus = load_ids(spec)  # also fills the id cache before two workers race to write it
    except RnnlmError as exc:
        hint = "" if os.environ.get("RNNLM_DATA") else (" (to read a local mirror instead of downloading, set "
                                                        "RNNLM_DATA, e.g. RNNLM_DATA=/work/shared/corpora)")
        sys.exit(f"Error: {exc}{hint}")
    steps = args.steps or spec["steps"]
    workers = {side: subprocess.Popen([sys.executable, __file__, "--worker", side, "--spec", json.dumps(spec),
                                       "--device", str(device), "--clock", args.clock], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
               for side in ("rnnlm", "plain")}
    rounds: dict[str, list[dict]] = {"rnnlm": [], "plain": []}
    try:
        for index in range(args.rounds + 1):  # round 0 warms both sides up and is not counted
            for side, process in workers.items():
                result = one_round(process, side, steps if index else max(2, steps // 4))
                if index:
                    rounds[side].append(result)
                elsewhere = "" if result["busy_elsewhere"] is None else \
                    f"  (other processes: {result['busy_elsewhere']:.2f} cores)"
                print(f"{name} {f'round {index}' if index else 'warm-up'} {side:5s} "
                      f"{result['tokens_per_sec']:10,.0f} tokens/s{elsewhere}", file=sys.stderr)
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait()
    if rounds["rnnlm"][0]["parameters"] != rounds["plain"][0]["parameters"] and not spec.get("overrides"):
        sys.exit("Error: the two sides built models of different sizes")
    return summarize(name, spec, corpus.tokenizer.vocab_size, steps, rounds)


def one_round(process: subprocess.Popen, side: str, steps: int) -> dict:
    """Ask a worker for one round; note how busy the rest of the machine was meanwhile."""
    busy, tick = busy_seconds(), time.perf_counter()
    process.stdin.write(f"{steps}\n")
    process.stdin.flush()
    answer = process.stdout.readline()
    while answer and not answer.startswith("{"):  # a native library's stray print on fd 1, not an answer
        sys.stderr.write(answer)
        answer = process.stdout.readline()
    if not answer:
        sys.exit(f"Error: the {side} worker stopped (see its message above)")
    result = json.loads(answer)
    result["tokens_per_sec"] = result["tokens"] / result["seconds"]
    result["busy_elsewhere"] = (None if busy is None else  # in cores, over the whole round (setup included)
                                max(0.0, busy_seconds() - busy - result["cpu_seconds"]) / (time.perf_counter() - tick))
    return result


def summarize(name: str, spec: dict, vocab: int, steps: int, rounds: dict[str, list[dict]]) -> dict:
    fpt = flops_per_token(spec, vocab)
    report = {"preset": name, "rnnlm_overrides": spec.get("overrides", []), "corpus": spec["corpus"],
              "vocab_size": vocab, "layers": spec["layers"],
              "hidden_size": spec["hidden"], "bptt": spec["bptt"], "batch_size": spec["batch"], "lr": spec["lr"],
              "dropout": spec.get("dropout", 0.0),
              "steps_per_round": steps, "rounds": len(rounds["plain"]),
              "parameters": rounds["plain"][0]["parameters"], "flops_per_token": fpt}
    for side, results in rounds.items():
        speeds = [r["tokens_per_sec"] for r in results]
        report[side] = {"tokens_per_sec": statistics.median(speeds), "best_tokens_per_sec": max(speeds),
                        "rounds_tokens_per_sec": speeds, "busy_elsewhere": [r["busy_elsewhere"] for r in results],
                        "ready_rss_mb": results[0]["ready_rss_mb"],
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
                        "cuda_peak_mb": None if results[0]["cuda_peak_mb"] is None else
                        max(r["cuda_peak_mb"] for r in results)}
    rn, pl = report["rnnlm"], report["plain"]
    report["ratio"] = rn["tokens_per_sec"] / pl["tokens_per_sec"]  # the headline: ratio of medians
    report["best_ratio"] = rn["best_tokens_per_sec"] / pl["best_tokens_per_sec"]
    report["paired_ratio"] = statistics.median(a / b for a, b in zip(rn["rounds_tokens_per_sec"],
                                                                     pl["rounds_tokens_per_sec"], strict=True))
    return report


def print_table(machine: dict, reports: list[dict]) -> None:
    print(f"device {machine['device']} ({machine['name']}, {machine['cpu_count']} CPUs) | torch {machine['torch']} | "
          f"{machine['threads']} threads | peak fp32 matmul {machine['peak_flops'] / 1e9:,.1f} GFLOP/s")
    cuda = machine["device"].startswith("cuda")
    print(f"{'preset':<14}{'rnnlm tok/s':>12}{'plain tok/s':>12}{'ratio':>7}{'best':>7}{'paired':>7}"
          f"{'MFU rnnlm':>10}{'MFU plain':>10}  " + ("CUDA peak MB" if cuda else "peak RSS MB (over imports)")
          + ": rnnlm / plain")
    for r in reports:
        rn, pl = r["rnnlm"], r["plain"]
        memory = (f"{rn['cuda_peak_mb']:,.0f} / {pl['cuda_peak_mb']:,.0f}" if cuda else
                  f"{rn['peak_rss_mb']:,.0f} (+{rn['peak_rss_mb'] - rn['ready_rss_mb']:,.0f}) / "
                  f"{pl['peak_rss_mb']:,.0f} (+{pl['peak_rss_mb'] - pl['ready_rss_mb']:,.0f})")
        print(f"{r['preset']:<14}{rn['tokens_per_sec']:>12,.0f}{pl['tokens_per_sec']:>12,.0f}{r['ratio']:>7.3f}"
              f"{r['best_ratio']:>7.3f}{r['paired_ratio']:>7.3f}{rn['mfu']:>10.1%}{pl['mfu']:>10.1%}  {memory}")
    print("ratio = rnnlm / plain tokens/s: of the medians; best: of the fastest rounds; paired: median of "
          "per-round ratios")
    if reports and reports[0]["rnnlm_overrides"]:
        print(f"rnnlm side with {' '.join(reports[0]['rnnlm_overrides'])}; MFU counts the plain model's FLOPs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*PRESETS, "all"], default="all", help="which model and corpus")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds per side, after one warm-up each")
    parser.add_argument("--steps", type=int, default=0, help="training steps per round (default: per preset)")
    parser.add_argument("--vocab-size", type=int, default=0,
                        help="word preset on a generated corpus with this many ids (e.g. 33278, as WikiText-2); "
                        "with --corpus, that corpus's vocabulary capped at this size")
    parser.add_argument("--corpus", help="word preset on this corpus (a file, folder or registry name) instead of PTB")
    parser.add_argument("--zipf", action="store_true",
                        help="with --vocab-size: draw the words by Zipf's law, as in real text (default: uniformly)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an rnnlm config override for the rnnlm side only, e.g. train.precision=bf16 "
                             "(repeatable; the plain side stays the fp32 full-softmax loop)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: each side runs one thread and is timed by its CPU seconds, for a CPU shared "
                             "with other jobs (MFU is then against the machine's peak, not one thread's)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--worker", choices=["rnnlm", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, json.loads(args.spec), args.device, args.clock)
    if args.rounds < 1 or args.steps < 0:
        parser.error("--rounds must be at least 1 and --steps 0 (the preset's) or more")
    if args.vocab_size and (args.vocab_size < 3 or args.preset == "char"):
        parser.error("--vocab-size needs the word preset and at least 3 ids")
    if args.zipf and not args.vocab_size:
        parser.error("--zipf needs --vocab-size")
    if args.corpus and (args.zipf or args.preset == "char"):
        parser.error("--corpus needs the word preset and no --zipf")
    from rnnlm.errors import RnnlmError
    from rnnlm.runtime import resolve_device

    try:
        device = resolve_device(args.device)
    except RnnlmError as exc:
        sys.exit(f"Error: {exc}")
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu times CPU seconds: it needs --device cpu")
    before = peak_matmul_flops(device)
    names = list(PRESETS) if args.preset == "all" else [args.preset]
    reports = []
    with tempfile.TemporaryDirectory(prefix="rnnlm-bench-data-") as scratch:
        for name in names:
            spec = dict(PRESETS[name], overrides=args.set)
            if name == "word" and args.corpus:
                spec.update(corpus=args.corpus, vocab_cap=args.vocab_size)
                name = f"word-{Path(args.corpus).stem}{f'-v{args.vocab_size}' if args.vocab_size else ''}"
            elif name == "word" and args.vocab_size:
                synthetic_corpus(args.vocab_size, Path(scratch), zipf=args.zipf)
                spec.update(corpus=scratch, cache_dir=str(Path(scratch) / "cache"))
                name = f"word-v{args.vocab_size}{'-zipf' if args.zipf else ''}"
            reports.append(run_preset(name, spec, args, device))
    peak = max(before, peak_matmul_flops(device))  # measured on both sides of the run: noise only lowers it
    machine = {"device": str(device), "name": device_name(device), "cpu_count": os.cpu_count(),
               "torch": torch.__version__, "threads": 1 if args.clock == "cpu" else torch.get_num_threads(),
               "clock": args.clock, "peak_flops": peak,
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for report in reports:  # model FLOP utilisation of each side's median speed
        for side in ("rnnlm", "plain"):
            report[side]["mfu"] = report["flops_per_token"] * report[side]["tokens_per_sec"] / peak
    if args.json:
        print(json.dumps({"machine": machine, "presets": reports}, indent=2))
    else:
        print_table(machine, reports)


if __name__ == "__main__":
    main()
