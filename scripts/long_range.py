"""Which cell keeps memory over which lag: RNN, GRU and LSTM on the delayed-copy task, against its exact floor.

    PYTHONPATH=$PWD python3 scripts/long_range.py [--lags 5 10 20 50 100 200] [--tokens 800000] [--out table.md]

For each lag N, `rnnlm synth copy --lag N` data (one letter of 8, recalled N characters later; floor.json holds
the exact entropy rate) is written to a temporary folder, and each cell is trained on it by rnnlm's own Trainer
(one thread, one run at a time) at about the same parameter count: the LSTM at --hidden-size, the GRU and RNN
at the hidden sizes whose counts come closest (printed). Every cell of a lag gets the same budget: --tokens
training tokens in windows of bptt = 2 (N + 2) (at least 64), so each line lies whole inside some window and
the gradient can reach back over the whole lag. Each best.pt is scored on the test split as `rnnlm eval` does
(batch size 1, warm start), with the floor and the gap from floor.json.

Where it lies: `recall bits` is the mean surprisal of the recalled letter (0: remembered, 3 = log2 8:
forgotten, more: not even expected there), `other bits/line` what a line costs beyond the floor everywhere
else (the dots, the line end, the first letter's 3 bits), from per-token scores as `rnnlm score` gives them.
`--keep DIR` keeps the data and runs; `--rescore` (with `--keep`) scores the runs already there, training
nothing.

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
from rnnlm.surprisal import token_scores
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
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the data and runs here, not in a temporary folder"
    )
    parser.add_argument("--rescore", action="store_true", help="score the runs already in --keep, training nothing")
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


def train(config: Config, run_dir: Path) -> float:
    """Train one run with rnnlm's Trainer; its seconds."""
    started = time.perf_counter()
    trainer = Trainer(config, run_dir, overwrite=True, progress=False, log=lambda message: None)
    try:
        trainer.setup()
        trainer.fit()
    finally:
        trainer.close()
    return time.perf_counter() - started


def score(checkpoint: Path, corpus: Path, lag: int) -> dict[str, float]:
    """The checkpoint on the task's test.txt as `rnnlm eval --text` scores it (with the floor and gap from
    floor.json), and the same bits per token split by place in the line (as `rnnlm score` gives them):
    `recall_bits`, the mean surprisal of the recalled letter (0: remembered; 3 = log2 8: forgotten), and
    `other_bits`, the bits a line costs beyond the floor everywhere else (0: the dots, the line end and the
    first letter's 3 bits exactly right)."""
    loaded = load_model(checkpoint, "cpu")
    text = corpus / "test.txt"
    scored, source = eval_source(loaded, split="test", text=text)
    result = score_checkpoint(
        loaded, scored, source, batch_size=1, bptt=256, device="cpu", precision="fp32", start="warm"
    ).result
    numbers = floor_numbers(loaded, text, result)
    recall, total, lines, place = 0.0, 0.0, 0, 0
    for row in token_scores(loaded.model, loaded.tokenizer, text, words=False, start="warm", device="cpu"):
        total += row.surprisal
        recall += row.surprisal if place == lag else 0.0
        place = 0 if row.text == "\n" else place + 1
        lines += row.text == "\n"
    return {
        "bits_per_token": result.bits_per_token,
        "floor": float(numbers["floor_bits_per_token"] or 0.0),
        "gap": float(numbers["gap_bits_per_token"] or 0.0),
        "recall_bits": recall / lines,
        "other_bits": (total - recall) / lines - 3.0,
    }


def run_all(args: argparse.Namespace, root: Path, sizes: dict[str, tuple[int, int]]) -> list[dict]:
    """Every lag and cell: write the task, train (unless --rescore), score; one row each, printed as it comes."""
    rows = []
    for lag in args.lags:
        corpus = root / f"copy-{lag}"
        if not args.rescore:
            write_task(make_task("copy", lag), corpus, seed=args.seed, tokens=args.data_tokens, overwrite=True)
        baseline = json.loads((corpus / "floor.json").read_text(encoding="utf-8"))["baseline_bits_per_token"]
        bptt = max(64, 2 * (lag + 2))
        steps = max(args.tokens // (args.batch_size * bptt), 1)
        for cell in args.cells:
            hidden, count = sizes[cell]
            run_dir = root / f"run-{lag}-{cell}"
            config = config_for(cell, hidden, corpus, bptt, steps, args)
            seconds = None if args.rescore else train(config, run_dir)
            row = {"lag": lag, "cell": cell, "hidden": hidden, "parameters": count, "steps": steps, "bptt": bptt}
            row.update(score(run_dir / "best.pt", corpus, lag), baseline=baseline, seconds=seconds)
            row["recalled"] = 1 - row["gap"] / (baseline - row["floor"])
            row["closed"] = row["gap"] < CLOSED * (baseline - row["floor"])
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def main() -> None:
    args = parse_args()
    if args.rescore and args.keep is None:
        raise SystemExit("--rescore scores the runs in --keep DIR: name the folder")
    vocab_size = 11  # a..h, '.', line end, <unk>
    sizes = matched_sizes(args.cells, args.hidden_size, vocab_size)
    for cell, (hidden, count) in sizes.items():
        print(f"{cell}: hidden {hidden}, {count:,} parameters", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        rows = run_all(args, args.keep or Path(scratch), sizes)
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


def format_row(row: dict) -> str:
    seconds = "" if row["seconds"] is None else f"{row['seconds']:.0f}"
    return (
        f"| {row['lag']} | {row['cell']} | {row['steps']} x {row['bptt']} | {row['bits_per_token']:.4f} | "
        f"{row['floor']:.4f} | {row['baseline']:.4f} | {row['gap']:.4f} | {row['recalled']:.0%} | "
        f"{'yes' if row['closed'] else 'no'} | {row['recall_bits']:.2f} | {row['other_bits']:.2f} | {seconds} |"
    )


def markdown(rows: list[dict]) -> str:
    head = (
        "| lag | cell | steps x bptt | test bits/token | floor | baseline | gap | recalled | closed | recall bits "
        "| other bits/line | seconds |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *map(format_row, rows)])


if __name__ == "__main__":
    main()
