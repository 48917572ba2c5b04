"""The lecture's "less vanishing gradient", measured: RNN (tanh, sigmoid), GRU and LSTM, fresh and trained.

    RNNLM_DATA=/work/shared/corpora python scripts/vanishing.py [--steps 300] [--out vanishing.svg]

Each cell, at one hidden size, is built and trained by rnnlm's own Trainer (one run at a time, one thread),
and its gradient-flow curve ||dJ_t/dh_{t-k}|| against the lag k (rnnlm/gradflow.py) is measured on the
validation split before the first step and after the last. The script draws all eight curves, each divided by
its value at lag 1, in one hand-written SVG (log scale), and prints the table of the lag at which each falls
below 1e-3 of its lag-1 value. The numbers of a run are recorded in docs/inspect.md.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rnnlm.config import load_config
from rnnlm.gradflow import GradientFlow, gradient_flow, vanishing_lag
from rnnlm.train import Trainer

# (label, model.cell, model.nonlinearity, model.impl): torch's fused RNN has no sigmoid, the reference cells do
KINDS = [
    ("RNN (tanh)", "rnn", "tanh", "fused"),
    ("RNN (sigmoid)", "rnn", "sigmoid", "reference"),
    ("GRU", "gru", "tanh", "fused"),
    ("LSTM", "lstm", "tanh", "fused"),
]
COLOURS = {"RNN (tanh)": "#d62728", "RNN (sigmoid)": "#ff7f0e", "GRU": "#2ca02c", "LSTM": "#1f77b4"}
RATIO = 1e-3


@dataclass
class Measured:
    label: str
    fresh: GradientFlow
    trained: GradientFlow
    valid_bits_per_char: float
    seconds: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="tinyshakespeare", help="data.corpus: a registry name or a text file")
    parser.add_argument("--hidden-size", type=int, default=64, help="model.hidden_size of every cell")
    parser.add_argument("--steps", type=int, default=300, help="train.max_steps of each training")
    parser.add_argument("--max-lag", type=int, default=200, help="the largest lag k measured")
    parser.add_argument("--positions", type=int, default=32, help="positions t of the text averaged over")
    parser.add_argument("--warmup", type=int, default=50, help="tokens read without gradient before each window")
    parser.add_argument("--out", type=Path, default=Path("vanishing.svg"), help="the SVG figure to write")
    parser.add_argument("--json", type=Path, default=None, help="also write every curve's numbers here")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    return parser.parse_args()


def measure(label: str, cell: str, nonlinearity: str, impl: str, args: argparse.Namespace, run_dir: Path) -> Measured:
    """Build one cell's model with the Trainer, measure it fresh, train it, measure it again."""
    config = load_config(
        None,
        [
            f"data.corpus={args.corpus}",
            "tokenizer.kind=char",
            f"model.cell={cell}",
            f"model.nonlinearity={nonlinearity}",
            f"model.impl={impl}",
            "model.num_layers=1",
            "model.embed_size=32",
            f"model.hidden_size={args.hidden_size}",
            "train.batch_size=32",
            "train.bptt=64",
            "train.epochs=0",
            f"train.max_steps={args.steps}",
            "train.eval_batch_size=32",
            "train.num_threads=1",
            "train.device=cpu",
            "train.tensorboard=false",
            "optim.name=adam",
            "optim.lr=0.003",
            "optim.clip=1.0",
            "optim.schedule=constant",
            *args.set,
        ],
    )
    trainer = Trainer(config, run_dir, progress=False, log=lambda message: None)
    started = time.perf_counter()
    try:
        trainer.setup()
        text = torch.from_numpy(np.asarray(trainer.corpus.splits["valid"].ids, dtype=np.int64))
        flow = dict(max_lag=args.max_lag, positions=args.positions, warmup=args.warmup)
        fresh = gradient_flow(trainer.model, text, **flow)
        summary = trainer.fit()
        trained = gradient_flow(trainer.model, text, **flow)
    finally:
        trainer.close()
    bits = summary.last_val.bits_per_char if summary.last_val is not None else math.nan
    return Measured(label, fresh, trained, bits, time.perf_counter() - started)


def lag_text(flow: GradientFlow) -> str:
    lag = vanishing_lag(flow.lags, flow.norms, RATIO)
    return f"> {flow.lags[-1]}" if lag is None else str(lag)


def table(results: list[Measured]) -> str:
    """The markdown table: per cell, the lag where the norm falls below 1e-3 of lag 1, fresh and trained."""
    rows = [
        "| cell | fresh: lag below 1e-3 | trained: lag below 1e-3 | trained / lag 1 at lag 20 "
        "| LSTM c, trained | valid bits/char | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in results:
        at20 = m.trained.norms[19] / m.trained.norms[0] if len(m.trained.norms) >= 20 else math.nan
        cell = (
            "-"
            if m.trained.cell_norms is None
            else (f"{vanishing_lag(m.trained.lags, m.trained.cell_norms, RATIO) or '> ' + str(m.trained.lags[-1])}")
        )
        rows.append(
            f"| {m.label} | {lag_text(m.fresh)} | {lag_text(m.trained)} | {at20:.1e} | {cell} "
            f"| {m.valid_bits_per_char:.3f} | {m.seconds:.0f} |"
        )
    return "\n".join(rows)


def svg(results: list[Measured], max_lag: int, floor_decades: int = 12) -> str:
    """All curves / their lag-1 value against the lag, log y from 10 down to 1e-floor_decades (drawn by hand)."""
    width, height, left, right, top, bottom = 760, 480, 70, 170, 30, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    high, low = 1.0, -float(floor_decades)  # log10 of the y range

    def x(lag: float) -> float:
        return left + plot_w * (lag - 1) / max(max_lag - 1, 1)

    def y(log_value: float) -> float:
        return top + plot_h * (high - log_value) / (high - low)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for decade in range(int(low), int(high) + 1):
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(decade):.1f}" y2="{y(decade):.1f}" '
            f'stroke="#ddd"/><text x="{left - 6}" y="{y(decade) + 4:.1f}" text-anchor="end">1e{decade}</text>'
        )
    step = 25 if max_lag > 100 else 10
    for lag in [1, *range(step, max_lag + 1, step)]:
        parts.append(
            f'<line x1="{x(lag):.1f}" x2="{x(lag):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#eee"/>'
            f'<text x="{x(lag):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{lag}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{y(math.log10(RATIO)):.1f}" '
        f'y2="{y(math.log10(RATIO)):.1f}" stroke="black" stroke-dasharray="2,3"/>'
    )
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">lag k</text>')
    parts.append(
        f'<text x="16" y="{top + plot_h / 2}" text-anchor="middle" transform="rotate(-90 16 '
        f'{top + plot_h / 2})">||dJ_t/dh_(t-k)|| / lag 1</text>'
    )
    for row, m in enumerate(results):
        for flow, dash, name in ((m.fresh, "5,4", "fresh"), (m.trained, "", "trained")):
            points = [
                (x(lag), y(math.log10(norm / flow.norms[0])))
                for lag, norm in zip(flow.lags, flow.norms, strict=True)
                if norm > 0 and math.log10(norm / flow.norms[0]) >= low
            ]
            line = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(
                f'<polyline points="{line}" fill="none" stroke="{COLOURS[m.label]}" stroke-width="1.8" '
                f'stroke-dasharray="{dash}"><title>{m.label}, {name}</title></polyline>'
            )
            key_y = top + 14 + 18 * (2 * row + (name == "trained"))
            parts.append(
                f'<line x1="{width - right + 10}" x2="{width - right + 34}" y1="{key_y - 4}" '
                f'y2="{key_y - 4}" stroke="{COLOURS[m.label]}" stroke-width="1.8" stroke-dasharray="{dash}"/>'
                f'<text x="{width - right + 40}" y="{key_y}">{m.label}, {name}</text>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    args = parse_args()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, cell, nonlinearity, impl in KINDS:  # one training at a time
            results.append(measure(label, cell, nonlinearity, impl, args, Path(scratch) / cell / nonlinearity))
    args.out.write_text(svg(results, args.max_lag), encoding="utf-8")
    if args.json is not None:
        numbers = {
            m.label: {
                "fresh": m.fresh.to_json(),
                "trained": m.trained.to_json(),
                "valid_bits_per_char": m.valid_bits_per_char,
            }
            for m in results
        }
        args.json.write_text(json.dumps(numbers, indent=1), encoding="utf-8")
    print(table(results))
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
