"""Training throughput of the parallel-scan cells (minGRU, minLSTM) against torch's fused LSTM and GRU.

Every model is an rnnlm `RNNLM` with a character-sized vocabulary, the same embedding and depth, and a
hidden size chosen so that its parameter count matches the LSTM's (printed). One training step is what
the trainer does: forward with the carried (detached) state, the mean loss's backward, gradient
clipping, an Adam step. Token ids are random (the speed does not depend on them). For each bptt the
models take turns, A B C D A B C D ..., each round a fixed number of tokens after one untimed warm-up
step per model; printed: the median tokens/s per model and the median over rounds of each model's
tokens/s divided by the LSTM's in the same round (a shared machine slows rounds down at random, and
neighbouring turns share the slowdown).

    PYTHONPATH=$PWD python scripts/bench_cells.py --threads 2
    PYTHONPATH=$PWD python scripts/bench_cells.py --cells lstm mingru-block minlstm-block   # the layout
    PYTHONPATH=$PWD python scripts/bench_cells.py --device cuda --round-tokens 1048576       # on a GPU

(On a machine whose cores other jobs already fill, use --threads 1: two OpenMP threads that wait for each
other at every parallel region then crawl.)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from rnnlm.config import load_config
from rnnlm.models import LanguageModel, build_model
from rnnlm.models.lm import detach_state

VOCAB = 66  # tinyshakespeare's characters plus rnnlm's specials


LAYOUT = ["model.min_residual=true", "model.min_norm=true", "model.min_mlp=4"]  # the scan cells' block layout


def build(cell: str, hidden: int, args: argparse.Namespace) -> LanguageModel:
    """`cell` is a model.cell, or mingru-block / minlstm-block: the scan cell in its block layout (residual
    stream, LayerNorm, MLP 4x wide), whose embedding is as wide as the stream."""
    name, _, layout = cell.partition("-")
    embed = hidden if layout == "block" else args.embed
    overrides = [f"model.cell={name}", f"model.hidden_size={hidden}", f"model.embed_size={embed}",
                 f"model.num_layers={args.layers}", "model.impl=fused", f"model.min_activation={args.activation}",
                 *(LAYOUT if layout == "block" else [])]
    torch.manual_seed(0)
    return build_model(VOCAB, load_config(None, overrides).model)


def matched_hidden(cell: str, target: int, args: argparse.Namespace) -> int:
    """The hidden size whose model's parameter count is nearest `target` (counts grow with the size)."""
    low, high = 1, 8 * args.hidden
    while low < high:  # the smallest size with at least `target` parameters
        mid = (low + high) // 2
        if build(cell, mid, args).num_parameters() < target:
            low = mid + 1
        else:
            high = mid
    return min((low - 1, low), key=lambda h: abs(build(cell, h, args).num_parameters() - target))


class Runner:
    """One model, its optimizer and its carried state; `steps(n)` trains n steps and returns seconds."""

    def __init__(self, model: LanguageModel, batch: int, bptt: int, device: torch.device) -> None:
        self.model, self.batch, self.bptt = model.to(device).train(), batch, bptt
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
        self.state = model.init_state(batch, device)
        self.ids = torch.randint(0, VOCAB, (bptt + 1, batch), device=device)

    def steps(self, count: int) -> float:
        start = time.perf_counter()
        for _ in range(count):
            out = self.model(self.ids[:-1], self.ids[1:], self.state)
            self.optimizer.zero_grad(set_to_none=True)
            out.training_objective().backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0, foreach=True)
            self.optimizer.step()
            self.state = detach_state(out.state)
        out.nll.item()  # the last step's result really exists (on a GPU: every queued kernel has run)
        return time.perf_counter() - start


def bench_bptt(models: dict[str, LanguageModel], bptt: int, args: argparse.Namespace) -> dict:
    runners = {name: Runner(model, args.batch, bptt, torch.device(args.device)) for name, model in models.items()}
    for runner in runners.values():
        runner.steps(1)  # warm-up: allocator, oneDNN primitives
    steps = max(1, args.round_tokens // (bptt * args.batch))
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            rates[name].append(steps * bptt * args.batch / runner.steps(steps))
    base = next(iter(rates))
    return {
        "bptt": bptt,
        "steps_per_round": steps,
        "tokens_per_s": {name: statistics.median(r) for name, r in rates.items()},
        "ratio_to_" + base: {
            name: statistics.median(a / b for a, b in zip(r, rates[base], strict=True)) for name, r in rates.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bptt", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256, help="the LSTM's; the others match its parameters")
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "mingru", "minlstm"],
                        help="model.cell values, or mingru-block / minlstm-block (the scan cells' layout)")
    parser.add_argument("--activation", default="g", choices=["g", "identity"], help="model.min_activation")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-tokens", type=int, default=32768, help="tokens per model per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target = build("lstm", args.hidden, args).num_parameters()
    models = {}
    for cell in args.cells:
        hidden = args.hidden if cell == "lstm" else matched_hidden(cell, target, args)
        models[cell] = build(cell, hidden, args)
        print(f"{cell}: hidden {hidden}, {models[cell].num_parameters():,} parameters")
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{args.threads} threads"
    print(f"torch {torch.__version__}, {where}, {platform.processor() or platform.machine()}")
    results = []
    for bptt in args.bptt:
        result = bench_bptt(models, bptt, args)
        results.append(result)
        ratios = result[f"ratio_to_{args.cells[0]}"]
        line = "  ".join(f"{n} {r:,.0f} tok/s ({ratios[n]:.2f}x)" for n, r in result["tokens_per_s"].items())
        print(f"bptt {bptt:5d}: {line}", flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"args": vars(args), "results": results}, file, indent=1)


if __name__ == "__main__":
    main()
