"""RNN, GRU, LSTM and a bidirectional LSTM's forward direction at equal parameters and equal training time.

Every model has one recurrent layer (one per direction for the bidirectional one) whose hidden size is
chosen so that the whole model has about as many parameters as the LSTM of --lstm-hidden, and trains
for the same wall-clock budget (`train.max_time`, the cosine schedule over the budget) on one CPU thread.
The bidirectional model is scored by its forward stack, which never reads a token to the right of the one
it predicts, so its score is a left-to-right language model's; its backward stack and infill head take
half its parameters and time, and help the forward head only through the shared embedding and softmax.
Each run is scored on the test split by `rnnlm eval --json` in bits per byte of the raw UTF-8 text.
Runs go round-robin (seed by seed, every corpus and architecture in turn) so that a shared machine's
load falls on each alike; results go to --out as JSON lines, one per run, and --report prints the table.

    RNNLM_DATA=/work/shared/corpora python scripts/compare_archs.py --budget 60s --seeds 1,2,3
    python scripts/compare_archs.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rnnlm.config import load_config
from rnnlm.data.corpus import load_corpus
from rnnlm.models import build_model

ARCHS = {
    "rnn": ["model.cell=rnn"],
    "gru": ["model.cell=gru"],
    "lstm": ["model.cell=lstm"],
    "bilstm-forward": ["model.cell=lstm", "model.bidirectional=true"],
}
CORPORA = {  # each corpus's tokens, shape and the hidden size of its reference LSTM
    "tinyshakespeare": (["tokenizer.kind=char", "model.embed_size=64", "train.batch_size=32", "train.bptt=64"], 256),
    "ptb": (["tokenizer.kind=word", "model.embed_size=128", "train.batch_size=20", "train.bptt=35"], 128),
}
TRAIN = [
    "model.num_layers=1",
    "optim.name=adam",
    "optim.lr=0.003",
    "optim.min_lr=0.0003",
    "optim.clip=1.0",
    "optim.schedule=cosine",
    "train.epochs=0",
    "train.max_steps=0",
    "train.eval_every=0",
    "train.num_threads=1",
    "train.log_every=50",
    "train.tensorboard=false",
    "train.device=cpu",
]


def parameters(vocab_size: int, overrides: list[str], hidden: int) -> int:
    return build_model(
        vocab_size, load_config(None, [*overrides, f"model.hidden_size={hidden}"]).model
    ).num_parameters()


def matched_hidden(vocab_size: int, overrides: list[str], target: int) -> tuple[int, int]:
    """The hidden size whose model comes closest to `target` parameters, and its count (they grow together)."""
    low, high = 1, 4096
    while low < high:  # the smallest size with at least `target` parameters
        middle = (low + high) // 2
        low, high = (middle + 1, high) if parameters(vocab_size, overrides, middle) < target else (low, middle)
    best = min((low - 1, low), key=lambda size: abs(parameters(vocab_size, overrides, size) - target))
    return best, parameters(vocab_size, overrides, best)


def plan(corpora: list[str], budget: str) -> dict[tuple[str, str], dict]:
    """Per (corpus, architecture): its overrides, hidden size and parameter count."""
    plans = {}
    for corpus in corpora:
        shape, lstm_hidden = CORPORA[corpus]
        base = [f"data.corpus={corpus}", *shape, *TRAIN, f"train.max_time={budget}"]
        config = load_config(None, base)
        vocab_size = load_corpus(config.data, config.tokenizer).tokenizer.vocab_size
        target = parameters(vocab_size, [*base, *ARCHS["lstm"]], lstm_hidden)
        for arch, cell in ARCHS.items():
            hidden, count = matched_hidden(vocab_size, [*base, *cell], target)
            plans[corpus, arch] = {
                "overrides": [*base, *cell, f"model.hidden_size={hidden}"],
                "hidden": hidden,
                "budget": budget,
                "parameters": count,
                "target": target,
            }
            print(f"{corpus} {arch}: hidden {hidden}, {count:,} parameters (target {target:,})", file=sys.stderr)
    return plans


def run(command: list[str]) -> tuple[float, str, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stdout}{done.stderr}")
    return time.perf_counter() - start, done.stdout, done.stderr


def train_and_score(corpus: str, arch: str, seed: int, spec: dict, runs: Path) -> dict:
    """Train one model for the budget, score its test split; what the table needs, as one record."""
    run_dir = runs / f"{corpus}-{arch}-seed{seed}"
    wall, _, log = run(
        [
            sys.executable,
            "-m",
            "rnnlm",
            "train",
            "--run-dir",
            str(run_dir),
            "--overwrite",
            "--no-progress",
            *spec["overrides"],
            f"train.seed={seed}",
        ]
    )
    done = re.search(r"Done: ([\d,]+) steps \(([\d,]+) tokens/s\)", log)
    assert done, log
    _, scored, _ = run(
        [
            sys.executable,
            "-m",
            "rnnlm",
            "eval",
            str(run_dir / "best.pt"),
            "--split",
            "test",
            "--json",
            "--device",
            "cpu",
        ]
    )
    test = json.loads(scored)
    return {
        "corpus": corpus,
        "arch": arch,
        "seed": seed,
        "budget": spec["budget"],
        "hidden": spec["hidden"],
        "parameters": spec["parameters"],
        "steps": int(done[1].replace(",", "")),
        "tokens_per_sec": int(done[2].replace(",", "")),
        "train_wall_s": round(wall, 1),
        "test_bits_per_byte": test["bits_per_byte"],
        "test_loss": test["loss"],
        "lossless": test["lossless"],
    }


def report(path: Path) -> None:
    """The table: per corpus, the architectures ranked by mean test bits per byte, with each one's spread
    over seeds, and its difference to the LSTM of the same seed (paired: the runs of one seed ran together)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(
        "| corpus | architecture | hidden | parameters | seeds | test bits/byte: mean ± sd | min – max "
        "| minus the LSTM's, per seed | tokens/s (mean) | steps (mean) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for corpus in dict.fromkeys(r["corpus"] for r in records):
        groups: dict[str, list[dict]] = {}
        for r in records:
            if r["corpus"] == corpus:
                groups.setdefault(r["arch"], []).append(r)
        lstm = {r["seed"]: r["test_bits_per_byte"] for r in groups.get("lstm", [])}
        for arch, runs in sorted(groups.items(), key=lambda item: mean(item[1], "test_bits_per_byte")):
            bpb = [r["test_bits_per_byte"] for r in runs]
            sd = statistics.stdev(bpb) if len(bpb) > 1 else float("nan")
            paired = ", ".join(f"{r['test_bits_per_byte'] - lstm[r['seed']]:+.3f}" for r in runs if r["seed"] in lstm)
            print(
                f"| {corpus} | {arch} | {runs[0]['hidden']} | {runs[0]['parameters']:,} | {len(runs)} | "
                f"{statistics.mean(bpb):.3f} ± {sd:.3f} | {min(bpb):.3f} – {max(bpb):.3f} | {paired} | "
                f"{mean(runs, 'tokens_per_sec'):,.0f} | {mean(runs, 'steps'):,.0f} |"
            )


def mean(runs: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--budget", default="60s", help="train.max_time of every run")
    parser.add_argument("--runs", type=Path, default=Path("runs/compare-archs"))
    parser.add_argument("--out", type=Path, default=Path("runs/compare-archs/results.jsonl"))
    parser.add_argument("--report", action="store_true", help="only print the table of the results in --out")
    args = parser.parse_args()
    if not args.report:
        plans = plan(args.corpora.split(","), args.budget)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for seed in map(int, args.seeds.split(",")):  # round-robin: the machine's load falls on each alike
            for corpus in args.corpora.split(","):
                for arch in args.archs.split(","):
                    record = train_and_score(corpus, arch, seed, plans[corpus, arch], args.runs)
                    print(json.dumps(record), file=sys.stderr)
                    with args.out.open("a") as out:
                        out.write(json.dumps(record) + "\n")
    report(args.out)


if __name__ == "__main__":
    main()
