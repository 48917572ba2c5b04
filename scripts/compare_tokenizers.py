"""Rank tokenizers by bits per byte: char, bpe (two vocabulary sizes) and word LSTMs of equal size.

Every model is a 2-layer LSTM with embed_size = hidden_size chosen so that it has about
--params parameters, and trains for the same budget of raw text: --steps steps of batch_size
windows that each cover about --window-bytes bytes (bptt = window bytes x the tokenizer's tokens per
byte on the validation split), so all models read the same bytes. Each is then scored on the test
split by `rnnlm eval --json`: bits per byte of the raw UTF-8 text, which any tokenizer can be
compared on (the word model's is marked lossy: its <unk> hides rare words).

    RNNLM_DATA=../shared/corpora python scripts/compare_tokenizers.py --corpus tinyshakespeare --corpus ptb
"""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import sys
import time
from pathlib import Path

from rnnlm.config import load_config
from rnnlm.data.analysis import report
from rnnlm.models import build_model

TOKENIZERS = {
    "char": ["tokenizer.kind=char"],
    "bpe-1000": ["tokenizer.kind=bpe", "tokenizer.vocab_size=1000"],
    "bpe-4000": ["tokenizer.kind=bpe", "tokenizer.vocab_size=4000"],
    "word": ["tokenizer.kind=word", "tokenizer.vocab_size=10000"],
}
TRAIN = ["model.cell=lstm", "model.num_layers=2", "optim.name=adam", "optim.lr=0.003", "optim.clip=5",
         "optim.schedule=constant", "train.tensorboard=false", "train.eval_batch_size=16",
         "train.log_every=50"]


def hidden_size_for(vocab_size: int, params: int, overrides: list[str]) -> tuple[int, int]:
    """The hidden size (= embed size) whose model comes closest to `params` parameters, and its count."""
    def count(size: int) -> int:
        config = load_config(None, [*overrides, f"model.embed_size={size}", f"model.hidden_size={size}"])
        return build_model(vocab_size, config.model).num_parameters()

    sizes = range(8, 2049, 8)
    above = bisect.bisect_left(sizes, params, key=count)  # the count grows with the size
    candidates = [sizes[k] for k in (above - 1, above) if 0 <= k < len(sizes)]
    best = min(candidates, key=lambda size: abs(count(size) - params))
    return best, count(best)


def run(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stdout}{done.stderr}")
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", action="append", required=True, help="registry name, file or folder")
    parser.add_argument("--tokenizers", default=",".join(TOKENIZERS))
    parser.add_argument("--params", type=int, default=500_000, help="parameters per model, about")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--window-bytes", type=int, default=128, help="bytes of text per window, about")
    parser.add_argument("--runs", type=Path, default=Path("runs/compare-tokenizers"))
    args = parser.parse_args()
    print("| corpus | tokenizer | vocabulary | parameters | hidden | bptt | tokens/byte | train s | test bits/byte |")
    print("|---|---|---|---|---|---|---|---|---|")
    for corpus in args.corpus:
        for name in args.tokenizers.split(","):
            base = [f"data.corpus={corpus}", *TOKENIZERS[name], *TRAIN]
            stats = report(load_config(None, base), show=0).stats
            hidden, params = hidden_size_for(stats.vocab_size, args.params, base)
            bptt = max(1, round(args.window_bytes * stats.tokens_per_byte))
            run_dir = args.runs / f"{Path(corpus).name}-{name}"
            seconds, _ = run([sys.executable, "-m", "rnnlm", "train", "--run-dir", str(run_dir), "--overwrite",
                              "--no-progress", *base, f"model.embed_size={hidden}", f"model.hidden_size={hidden}",
                              f"train.bptt={bptt}", f"train.batch_size={args.batch_size}",
                              "train.epochs=0", f"train.max_steps={args.steps}"])
            _, output = run([sys.executable, "-m", "rnnlm", "eval", str(run_dir / "last.pt"), "--split", "test",
                             "--json", "--device", "cpu"])
            scored = json.loads(output)
            mark = "" if scored["lossless"] else " (lossy)"
            print(f"| {Path(corpus).name} | {name} | {stats.vocab_size:,} | {params:,} | {hidden} | {bptt} | "
                  f"{stats.tokens_per_byte:.3f} | {seconds:.0f} | {scored['bits_per_byte']:.3f}{mark} |", flush=True)


if __name__ == "__main__":
    main()
