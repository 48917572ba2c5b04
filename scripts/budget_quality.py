"""Quality per time budget on tinyshakespeare: the best validation loss rnnlm's LSTM, GRU, minGRU and
minLSTM (stacked plainly, or in the paper's layout: the `-block` sizes) and a baby GPT
(scripts/baby_gpt.py) reach in a fixed budget of CPU (default) or wall-clock seconds on this machine.

The split is nanoGPT's: the first int(0.9 * len) characters of the file train, the rest validate.

    python scripts/budget_quality.py prepare /tmp/shakespeare-90-10
    RNNLM_DATA=/work/shared/corpora python scripts/budget_quality.py sweep /tmp/shakespeare-90-10 \\
        --budget 120 --seeds 1 --setting lstm:3e-3 --setting gru:3e-3 --setting gpt:1e-3 --out results.jsonl
    python scripts/budget_quality.py report results.jsonl --svg docs/time-to-quality.svg

`sweep` runs one training at a time, each in its own process, round-robin (seed by seed, setting by
setting) so that the load of a shared machine falls on every model alike, and appends one JSON line per
run. Every side trains with the same number of torch threads (--threads, default 1). The budget covers
the training steps and the validations a side makes while it trains (rnnlm's Trainer validates at each
epoch end and at the end of the run, with eval batch 128; the GPT makes none), so the RNNs pay for a
validation pass the GPT does not. The final score is off the clock and the same for every model: the mean
NLL per character in nats over the whole validation split, every character scored once (the RNNs
statefully, rnnlm's `evaluate` with batch 4: four streams of 27,885 characters, each from a zero state; the
GPT by sliding windows of its block with half-block stride, see baby_gpt.py).

--clock cpu (default) counts this process's CPU seconds: on a machine shared with other jobs a wall-clock
budget measures the neighbours' load, CPU time (one thread) stands for wall time on a quiet core. The GPT
checks the CPU clock at every step; rnnlm's Trainer runs its own `train.max_time` on `time.process_time`
(the Trainer's `clock`), so its cosine, its stop and its final validation all count CPU seconds. --clock
wall: both count wall seconds. (Rows measured before 2026-11-30 15:30 UTC stopped rnnlm through
`train.max_steps` sized from a measured CPU cost per step: their "stop" says "max_steps (cpu)".)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
CORPUS = "tinyshakespeare"
LAYOUT = ("model.min_residual=true", "model.min_norm=true", "model.min_mlp=4")  # the scan cells' block layout
# name -> (cell, hidden size): equal parameters, about 0.88M with embed 64 (the GPT has 0.81M)
SIZES = {
    "lstm": ("lstm", 256),
    "gru": ("gru", 296),
    "lstm-s": ("lstm", 192),
    "gru-s": ("gru", 224),
    "lstm-l": ("lstm", 384),
    "gru-l": ("gru", 448),
    "mingru": ("mingru", 613),
    "minlstm": ("minlstm", 497),
    "mingru-block": ("mingru", 206),  # in the layout: see EXTRA
    "minlstm-block": ("minlstm", 197),
    # about 2.5M parameters, for the hour (with the GPT's gpt-l, 2.7M)
    "lstm-xl": ("lstm", 448),
    "gru-xl": ("gru", 512),
    "minlstm-block-xl": ("minlstm", 334),
}
# sizes that need more than a cell and a width: the layout (residual stream, LayerNorm, MLP 4x wide) with
# embed = hidden; the MLPs take most of the weights
EXTRA = {
    "mingru-block": (*LAYOUT, "model.embed_size=206"),
    "minlstm-block": (*LAYOUT, "model.embed_size=197"),
    "minlstm-block-xl": (*LAYOUT, "model.embed_size=334"),
}
GPT_SIZES = {"gpt": (4, 128), "gpt-s": (3, 96), "gpt-l": (6, 192)}  # (layers, width), heads 4, block 64


def prepare(folder: Path, corpus: str = CORPUS) -> dict:
    """train.txt / valid.txt in `folder`: nanoGPT's split of tinyshakespeare, to the character, or the
    standard train and valid files of `corpus` (ptb)."""
    from rnnlm.data import registry

    source = registry.resolve(corpus, Path(tempfile.gettempdir()) / "rnnlm-budget-cache")
    if source.single is not None:
        text = source.single.read_text(encoding="utf-8")
        cut = int(0.9 * len(text))
        parts = {"train.txt": text[:cut], "valid.txt": text[cut:]}
    else:
        parts = {f"{s}.txt": source.files[s].read_text(encoding="utf-8") for s in ("train", "valid")}
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        with open(folder / name, "w", encoding="utf-8", newline="") as f:
            f.write(part)
    summary = {"folder": str(folder), "corpus": corpus, **{name: len(part) for name, part in parts.items()}}
    (folder / "prepared.json").write_text(json.dumps(summary))
    return summary


def corpus_of(folder: Path) -> str:
    """The corpus `prepare` wrote into `folder` (folders prepared before it said so are tinyshakespeare's)."""
    prepared = folder / "prepared.json"
    return json.loads(prepared.read_text())["corpus"] if prepared.is_file() else CORPUS


def bits_per_byte(nats_per_char: float, chars: int, folder: Path) -> float:
    """The validation loss in bits per UTF-8 byte of valid.txt: comparable across tokenizers and corpora."""
    return nats_per_char * chars / math.log(2) / len((folder / "valid.txt").read_bytes())


def rnn_overrides(folder: Path, size: str, lr: float, seed: int, threads: int, dropout: float) -> list[str]:
    cell, hidden = SIZES[size]
    return [
        f"data.corpus={folder}",
        "tokenizer.kind=char",
        f"model.cell={cell}",
        "model.num_layers=2",
        "model.embed_size=64",
        f"model.hidden_size={hidden}",
        f"model.dropout={dropout}",
        "train.batch_size=32",
        "train.bptt=64",
        "train.epochs=0",
        "train.eval_every=0",
        "train.eval_batch_size=128",
        "train.log_every=20",
        "train.tensorboard=false",
        f"train.seed={seed}",
        f"train.num_threads={threads}",
        "optim.name=adam",
        f"optim.lr={lr}",
        "optim.clip=5.0",
        "optim.schedule=cosine",
        f"optim.min_lr={lr / 10}",
        *EXTRA.get(size, ()),
    ]


def cpu_seconds() -> float:
    """User + system CPU time of this process so far: with the wall clock it shows the share of a core a run got."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rnn_fit(overrides: list[str], run_dir: Path, clock: Callable[[], float]) -> tuple[Any, Any, float, float]:
    """Train with rnnlm's Trainer, its `train.max_time` read from `clock`: (trainer, summary, wall and CPU
    seconds of fit, its validations included)."""
    from rnnlm.config import load_config
    from rnnlm.train import Trainer

    trainer = Trainer(
        load_config(ROOT / "configs" / "shakespeare-char.yaml", overrides),
        run_dir,
        progress=False,
        log=lambda message: print(message, file=sys.stderr),
        clock=clock,
    )
    trainer.setup()  # loading the corpus is off the clock, as the GPT's encoding is
    begin, cpu = time.perf_counter(), cpu_seconds()
    summary = trainer.fit()
    return trainer, summary, time.perf_counter() - begin, cpu_seconds() - cpu


def run_rnn(args: argparse.Namespace) -> dict:
    from rnnlm.evaluate import evaluate

    overrides = rnn_overrides(args.folder, args.size, args.lr, args.seed, args.threads, args.dropout)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    stop = f"max_time ({args.clock} clock)"
    with tempfile.TemporaryDirectory(prefix="rnnlm-budget-") as scratch:
        trainer, summary, wall, cpu = rnn_fit(
            [*overrides, f"train.max_time={args.budget:g}s"], Path(scratch) / "run", clock
        )
        tick = time.perf_counter()
        valid = trainer.corpus.splits["valid"]
        result = evaluate(trainer.model, valid, boundary_id=trainer.tokenizer.boundary_id, batch_size=4, bptt=256)
        parameters = sum(p.numel() for p in trainer.model.parameters())
        trainer.close()
    return {
        "steps": summary.steps,
        "train_seconds": wall,
        "cpu_seconds": cpu,
        "step_seconds": summary.train_seconds,
        "tokens_per_second": summary.tokens_per_sec,
        "tokens_per_cpu_second": summary.tokens / cpu,
        "parameters": parameters,
        "val_loss": result.loss,
        "val_chars": result.tokens,
        "trainer_val_loss": summary.last_val.loss,
        # the Trainer's best (an epoch end may beat the budget's end: the score above is the model at the end)
        "trainer_best_val_loss": summary.best_val_loss,
        "stop": stop,
        "eval_seconds": time.perf_counter() - tick,
    }


def run_gpt(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    import baby_gpt

    torch.manual_seed(args.seed)
    train_ids, valid_ids, vocab = baby_gpt.encode_files(args.folder / "train.txt", args.folder / "valid.txt")
    layers, width = GPT_SIZES[args.size]
    model = baby_gpt.BabyGPT(baby_gpt.GPTConfig(vocab, 64, layers, 4, width, args.dropout))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    cpu = cpu_seconds()
    result = baby_gpt.train(
        model, train_ids, budget=args.budget, lr=args.lr, batch_size=12, seed=args.seed, clock=clock
    )
    result["cpu_seconds"] = cpu_seconds() - cpu
    result["tokens_per_cpu_second"] = result["steps"] * 12 * 64 / result["cpu_seconds"]
    tick = time.perf_counter()
    result["val_loss"], result["val_chars"] = baby_gpt.evaluate(model, valid_ids)
    result.update(
        parameters=sum(p.numel() for p in model.parameters()),
        stop=f"{args.clock} clock",
        eval_seconds=time.perf_counter() - tick,
    )
    return result


def run_one(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    result = run_gpt(args) if args.size in GPT_SIZES else run_rnn(args)
    result["bits_per_byte"] = bits_per_byte(result["val_loss"], result["val_chars"], args.folder)
    result.update(
        corpus=corpus_of(args.folder),
        model=args.size,
        lr=args.lr,
        dropout=args.dropout,
        seed=args.seed,
        budget=args.budget,
        threads=args.threads,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    print(json.dumps(result))


def sweep(args: argparse.Namespace) -> None:
    """Each seed, each setting in turn, one process at a time; results appended to --out as they come."""
    for seed in args.seeds:
        for setting in args.setting:
            size, lr = setting.split(":")
            command = [
                sys.executable,
                __file__,
                "run",
                str(args.folder),
                "--size",
                size,
                "--lr",
                lr,
                "--seed",
                str(seed),
                "--budget",
                str(args.budget),
                "--threads",
                str(args.threads),
                "--dropout",
                str(args.dropout),
                "--clock",
                args.clock,
            ]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            line = done.stdout.strip().splitlines()[-1]
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            print(line, flush=True)


def summarize(rows: list[dict]) -> list[dict]:
    """One row per (budget, model, lr): mean and spread of the validation loss over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row.get("corpus", CORPUS), row["budget"], row["model"], row["lr"], row.get("dropout", 0.0))
        groups.setdefault(key, []).append(row)
    table = []
    for (corpus, budget, model, lr, dropout), runs in sorted(groups.items()):
        # rows from before bits_per_byte was recorded are tinyshakespeare's, which is ASCII: a byte per character
        bits = [r.get("bits_per_byte", r["val_loss"] / math.log(2)) for r in runs]
        losses = [r["val_loss"] for r in runs]
        table.append(
            {
                "corpus": corpus,
                "budget": budget,
                "model": model,
                "lr": lr,
                "dropout": dropout,
                "seeds": len(runs),
                "mean": statistics.mean(losses),
                "min": min(losses),
                "max": max(losses),
                "parameters": runs[0]["parameters"],
                "steps": statistics.mean(r["steps"] for r in runs),
                "tokens_per_second": statistics.mean(r["tokens_per_second"] for r in runs),
                "tokens_per_cpu_second": statistics.mean(r["tokens_per_cpu_second"] for r in runs),
                "cpu_seconds": [r["cpu_seconds"] for r in runs],
                "seconds": statistics.mean(r["train_seconds"] for r in runs),
                "bits_per_byte": statistics.mean(bits),
                "bits_min": min(bits),
                "bits_max": max(bits),
            }
        )
    return table


def markdown(table: list[dict]) -> str:
    lines = [
        "| corpus | budget | model | lr | dropout | seeds | val loss mean | min - max | bits/byte | parameters | "
        "steps | CPU s used | tokens per CPU s | tokens per wall s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['corpus']} | {t['budget'] / 60:.3g} min | {t['model']} | {t['lr']:g} | {t['dropout']:g} | "
            f"{t['seeds']} | {t['mean']:.4f} | {t['min']:.4f} - {t['max']:.4f} | "
            f"{t['bits_per_byte']:.4f} | "
            f"{t['parameters']:,} | {t['steps']:,.0f} | "
            f"{', '.join(f'{c:.0f}' for c in t['cpu_seconds'])} | {t['tokens_per_cpu_second']:,.0f} | "
            f"{t['tokens_per_second']:,.0f} | {t['seconds']:.0f} |"
        )
    return "\n".join(lines)


# what a chart shows: its title, the table's keys of the value and its whiskers, and a dashed goal line
NATS = ("best validation loss (nats/char), tinyshakespeare 90/10, by budget: lower is better", "mean", "min", "max")
BITS = (
    "best validation bits per byte, Penn Treebank's valid file, character models, by budget: lower is better",
    "bits_per_byte",
    "bits_min",
    "bits_max",
)
GOAL = (1.47, "1.47: nanoGPT's 10.7M-parameter GPT on an A100")  # issue 17's goal for the hour


def svg_chart(best: list[dict], shown: tuple[str, str, str, str] = NATS, goal: tuple[float, str] | None = GOAL) -> str:
    """Grouped bars: per budget, each model's best mean validation loss (or bits per byte: `shown`),
    whiskers from min to max over seeds."""
    title, value, least, most = shown
    budgets = sorted({t["budget"] for t in best})
    models = sorted({t["model"] for t in best})
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
    low = math.floor(10 * (min(t[least] for t in best) - 0.02)) / 10  # every bar at least 0.02 tall
    low, high = min(low, goal[0]) if goal else low, max(t[most] for t in best) + 0.05
    legend = [24 + 7 * len(model) + 16 for model in models]  # each key's width: swatch, label, gap
    goal_key = 30 + 7 * len(goal[1]) if goal else 0
    height, left, top, bottom = 320, 60, 30, 260
    width = max(960, 120 + 200 * len(budgets), left + 10 + sum(legend) + goal_key)
    y = lambda v: bottom - (v - low) / (high - low) * (bottom - top)  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="12">',
        f'<text x="{left}" y="18">{title}</text>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{bottom}" x2="{width - 20}" y2="{bottom}" stroke="black"/>',
    ]
    tick, step = low, 0.1 if high - low < 1.5 else 0.2
    while tick <= high:
        parts.append(
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.1f}</text>'
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{width - 20}" y2="{y(tick):.1f}" stroke="#ddd"/>'
        )
        tick = round(tick + step, 1)
    if goal:
        parts.append(
            f'<line x1="{left}" y1="{y(goal[0]):.1f}" x2="{width - 20}" y2="{y(goal[0]):.1f}" stroke="#555" '
            f'stroke-dasharray="6 4"/>'
        )
    bar = 160 / len(models)
    for i, budget in enumerate(budgets):
        x0 = left + 20 + 200 * i
        parts.append(f'<text x="{x0 + 80}" y="{bottom + 18}" text-anchor="middle">{budget / 60:g} CPU minutes</text>')
        for j, model in enumerate(models):
            found = [t for t in best if t["budget"] == budget and t["model"] == model]
            if not found:
                continue
            t, x = found[0], x0 + j * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{y(t[value]):.1f}" width="{bar - 4:.1f}" '
                f'height="{bottom - y(t[value]):.1f}" fill="{colors[j % len(colors)]}"/>'
                f'<line x1="{x + bar / 2 - 2:.1f}" y1="{y(t[least]):.1f}" x2="{x + bar / 2 - 2:.1f}" '
                f'y2="{y(t[most]):.1f}" stroke="black"/>'
                f'<text x="{x + bar / 2 - 2:.1f}" y="{y(t[most]) - 4:.1f}" text-anchor="middle" '
                f'font-size="10">{t[value]:.3f}</text>'
            )
    x = left + 10
    for j, model in enumerate(models):
        parts.append(
            f'<rect x="{x}" y="{height - 22}" width="10" height="10" '
            f'fill="{colors[j % len(colors)]}"/><text x="{x + 14}" y="{height - 13}">{model}</text>'
        )
        x += legend[j]
    if goal:  # the goal line's key, after the models'
        parts.append(
            f'<line x1="{x}" y1="{height - 17}" x2="{x + 24}" y2="{height - 17}" stroke="#555" '
            f'stroke-dasharray="6 4"/><text x="{x + 30}" y="{height - 13}">{goal[1]}</text>'
        )
    return "\n".join([*parts, "</svg>", ""])


def family(model: str) -> str:
    """A model's name without its size: gru-xl and gru are one family, mingru-block (a layout) is its own."""
    name, _, size = model.rpartition("-")
    return name if size in ("s", "l", "xl") else model


def report(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    table = summarize(rows)
    print(markdown(table))
    best: dict[tuple, dict] = {}  # per budget and model family, the setting with the lowest mean
    for t in table:
        key = (t["corpus"], t["budget"], family(t["model"]))
        if key not in best or t["mean"] < best[key]["mean"]:
            best[key] = t
    chosen = [dict(t, model=key[2]) for key, t in best.items()]
    order = sorted(chosen, key=lambda t: (t["corpus"], t["budget"], t["mean"]))
    print("\nbest per corpus, budget and model:\n" + markdown(order))
    if args.svg:  # tinyshakespeare's loss
        args.svg.write_text(svg_chart([t for t in chosen if t["corpus"] == CORPUS]), encoding="utf-8")
    if args.svg_ptb:  # PTB's character models in bits per byte (its word models run as recipes: in the doc)
        ptb = [t for t in chosen if t["corpus"] == "ptb"]
        args.svg_ptb.write_text(svg_chart(ptb, BITS, goal=None), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="write nanoGPT's 90/10 split of tinyshakespeare into a folder")
    p.add_argument("folder", type=Path)
    p.add_argument("--corpus", default=CORPUS, help="ptb: its own train and valid files instead")
    for name in ("run", "sweep"):
        p = commands.add_parser(name, help="one training" if name == "run" else "several, round-robin")
        p.add_argument("folder", type=Path, help="the folder `prepare` wrote")
        p.add_argument("--budget", type=float, default=120.0, help="seconds of training (see --clock)")
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for every model")
        p.add_argument("--dropout", type=float, default=0.0, help="dropout for every model (rnnlm's model.dropout)")
        p.add_argument(
            "--clock",
            choices=["cpu", "wall"],
            default="cpu",
            help="what the budget counts: this "
            "process's CPU seconds (default: a shared machine's load does not shrink a run) or wall seconds",
        )
        if name == "run":
            p.add_argument("--size", choices=sorted(SIZES) + sorted(GPT_SIZES), required=True)
            p.add_argument("--lr", type=float, required=True)
            p.add_argument("--seed", type=int, default=1)
        else:
            p.add_argument("--setting", action="append", required=True, metavar="SIZE:LR", help="e.g. lstm:3e-3")
            p.add_argument("--seeds", type=int, nargs="+", default=[1])
            p.add_argument("--out", type=Path, required=True, help="JSON lines file to append to")
    p = commands.add_parser("report", help="the table (markdown) and optionally the SVG chart")
    p.add_argument("results", type=Path)
    p.add_argument("--svg", type=Path, help="tinyshakespeare's chart")
    p.add_argument("--svg-ptb", type=Path, help="Penn Treebank's chart, in bits per byte")
    args = parser.parse_args()
    if args.command == "prepare":
        print(json.dumps(prepare(args.folder, args.corpus)))
    else:
        {"run": run_one, "sweep": sweep, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
