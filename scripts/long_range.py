"""Which cell keeps memory over which lag: RNN, GRU and LSTM on the delayed-copy task, against its exact floor.

    PYTHONPATH=$PWD python3 scripts/long_range.py [--lags 5 10 20 50 100 200] [--tokens 800000] [--out table.md]

For each lag N, `rnnlm synth copy --lag N` data (one letter of 8, recalled N characters later; floor.json holds
the exact entropy rate) is written to a temporary folder, and each cell is trained on it by rnnlm's own Trainer
(one thread, one run at a time) at about the same parameter count: the LSTM at --hidden-size, the GRU and RNN
at the hidden sizes whose counts come closest (printed). Every cell of a lag gets the same budget: --tokens
training tokens in windows of bptt = 2 (N + 2) (at least 64), so each line lies whole inside some window and
the gradient can reach back over the whole lag. Each best.pt is scored on the test split as `rnnlm eval` does
(batch size 1, warm start), with the floor and the gap from floor.json.

The gap is closed when the model recalls at least 90% of what can be recalled: gap < 10% of (baseline -
floor), the baseline being the best predictor that knows the position in the line but forgets the letter
(twice the floor here). `recalled` = 1 - gap / (baseline - floor): 1 is perfect recall, 0 the forgetful
baseline, below 0 worse than it (not even the dots and line ends right).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rnnlm.checkpoint import load_model
from rnnlm.config import Config, load_config
from rnnlm.evaluate import eval_source, floor_numbers, score_checkpoint
from rnnlm.models import build_model
from rnnlm.synth import make_task, write_task
from rnnlm.train import Trainer

CELLS = ("rnn", "gru", "lstm")
CLOSED = 0.10  # of (baseline - floor)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lags", type=int, nargs="+", default=[5, 10, 20, 50, 100, 200])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--hidden-size", type=int, default=64, help="the LSTM's; the others are sized to match")
    parser.add_argument("--tokens", type=int, default=800_000, help="training tokens of every run")
    parser.add_argument("--data-tokens", type=int, default=200_000, help="characters of train.txt")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate, every cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--json", type=Path, default=None, help="also write every row's numbers here")
    return parser.parse_args()


def config_for(cell: str, hidden: int, corpus: Path, bptt: int, steps: int, args: argparse.Namespace) -> Config:
    return load_config(
        None,
        [
            f"data.corpus={corpus}",
            "tokenizer.kind=char",
            f"model.cell={cell}",
            "model.num_layers=1",
            "model.embed_size=16",
            f"model.hidden_size={hidden}",
            f"train.batch_size={args.batch_size}",
            f"train.bptt={bptt}",
            "train.epochs=0",
            f"train.max_steps={steps}",
            f"train.eval_every={max(steps // 4, 1)}",
            "train.eval_batch_size=16",
            f"train.log_every={max(steps // 20, 1)}",
            "train.num_threads=1",
            "train.tensorboard=false",
            "train.device=cpu",
            f"train.seed={args.seed}",
            "optim.name=adam",
            f"optim.lr={args.lr}",
            "optim.clip=1.0",
            "optim.schedule=constant",
        ],
    )


def parameters(cell: str, hidden: int, vocab_size: int) -> int:
    model = build_model(
        vocab_size,
        load_config(
            None, [f"model.cell={cell}", "model.num_layers=1", "model.embed_size=16", f"model.hidden_size={hidden}"]
        ).model,
    )
    return sum(p.numel() for p in model.parameters())


def matched_sizes(cells: list[str], lstm_hidden: int, vocab_size: int) -> dict[str, tuple[int, int]]:
    """cell -> (hidden size, parameter count), each count the closest to the LSTM's at --hidden-size."""
    target = parameters("lstm", lstm_hidden, vocab_size)
    sizes = {}
    for cell in cells:
        best = min(range(8, 8 * lstm_hidden), key=lambda h: abs(parameters(cell, h, vocab_size) - target))
        sizes[cell] = (best, parameters(cell, best, vocab_size))
    return sizes


def train_and_score(config: Config, run_dir: Path) -> tuple[dict[str, float | None], float, float]:
    """(eval numbers of best.pt on the test split, its bits per token, seconds of training)."""
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, progress=False, log=lambda message: None)
    try:
        trainer.setup()
        trainer.fit()
    finally:
        trainer.close()
    seconds = time.perf_counter() - started
    loaded = load_model(run_dir / "best.pt", "cpu")
    scored, source = eval_source(loaded, split="test", text=None)
    score = score_checkpoint(
        loaded, scored, source, batch_size=1, bptt=256, device="cpu", precision="fp32", start="warm"
    )
    return floor_numbers(loaded, None, score.result), score.result.bits_per_token, seconds


def main() -> None:
    args = parse_args()
    rows = []
    vocab_size = 11  # a..h, '.', line end, <unk>
    sizes = matched_sizes(args.cells, args.hidden_size, vocab_size)
    for cell, (hidden, count) in sizes.items():
        print(f"{cell}: hidden {hidden}, {count:,} parameters", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for lag in args.lags:
            corpus = Path(scratch) / f"copy-{lag}"
            record = write_task(make_task("copy", lag), corpus, seed=args.seed, tokens=args.data_tokens)
            bptt = max(64, 2 * (lag + 2))
            steps = max(args.tokens // (args.batch_size * bptt), 1)
            for cell in args.cells:
                hidden, count = sizes[cell]
                config = config_for(cell, hidden, corpus, bptt, steps, args)
                numbers, bits, seconds = train_and_score(config, Path(scratch) / f"run-{lag}-{cell}")
                floor, baseline = record["bits_per_token"], record["baseline_bits_per_token"]
                gap = bits - floor
                row = {
                    "lag": lag,
                    "cell": cell,
                    "hidden": hidden,
                    "parameters": count,
                    "steps": steps,
                    "bptt": bptt,
                    "bits_per_token": bits,
                    "floor": floor,
                    "baseline": baseline,
                    "gap": gap,
                    "recalled": 1 - gap / (baseline - floor),
                    "closed": gap < CLOSED * (baseline - floor),
                    "seconds": seconds,
                    "eval_gap": numbers["gap_bits_per_token"],
                }
                rows.append(row)
                print(format_row(row), flush=True)
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


def format_row(row: dict) -> str:
    return (
        f"| {row['lag']} | {row['cell']} | {row['steps']} x {row['bptt']} | {row['bits_per_token']:.4f} | "
        f"{row['floor']:.4f} | {row['baseline']:.4f} | {row['gap']:.4f} | {row['recalled']:.0%} | "
        f"{'yes' if row['closed'] else 'no'} | {row['seconds']:.0f} |"
    )


def markdown(rows: list[dict]) -> str:
    head = (
        "| lag | cell | steps x bptt | test bits/token | floor | baseline | gap | recalled | closed | seconds |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *map(format_row, rows)])


if __name__ == "__main__":
    main()
