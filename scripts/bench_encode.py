"""Large-corpus benchmark: encoding throughput per tokenizer, and peak memory of word-LSTM training.

Each measurement runs in its own process, so its peak resident memory (ru_maxrss from wait4) is
its own. Resident memory counts the pages of the memory-mapped ids that were read, which the
kernel may drop at any time; the rest is the process's own.

    python scripts/make_big_corpus.py /tmp/rnnlm-big/big.txt
    python scripts/bench_encode.py /tmp/rnnlm-big/big.txt --work /tmp/rnnlm-big/work
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

# the shape of configs/ptb-small.yaml (Zaremba et al. 2014, small) with its 10,000-word vocabulary
TRAIN = ["tokenizer.kind=word", "tokenizer.vocab_size=10000", "model.cell=lstm", "model.num_layers=2", "model.embed_size=200",
         "model.hidden_size=200", "train.batch_size=20", "train.bptt=35", "train.tensorboard=false",
         "train.log_every=10", "data.valid_fraction=0.0005", "data.test_fraction=0.0005"]


def encode_one(corpus: Path, kind: str, cache: Path) -> dict:
    """Build `kind`'s tokenizer on the whole file and encode it into a fresh cache (in this process)."""
    from rnnlm.config import TokenizerConfig
    from rnnlm.data.corpus import Segment, build_tokenizer, encode_segment

    segment = Segment(corpus, 0, corpus.stat().st_size)
    start = time.perf_counter()
    tokenizer = build_tokenizer(TokenizerConfig(kind=kind), segment)
    built = time.perf_counter()
    split = encode_segment(segment, tokenizer, cache)
    done = time.perf_counter()
    return {"kind": kind, "vocab_size": tokenizer.vocab_size, "tokens": len(split.ids), "bytes": split.bytes,
            "build_s": built - start, "encode_s": done - built, "mb_per_s": split.bytes / 1e6 / (done - built)}


def measured(args: list[str]) -> tuple[int, float, float, str]:
    """Run a command; return its exit code, wall seconds, its own peak resident MB, and its output."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rnnlm-bench-encode"), help="caches and run folders")
    parser.add_argument("--kinds", default="char,word,bpe")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the word LSTM (0: skip training)")
    parser.add_argument("--encode-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encode_one:
        print(json.dumps(encode_one(args.corpus, args.encode_one, args.work / f"cache-{args.encode_one}")))
        return
    size = args.corpus.stat().st_size
    print(f"corpus {args.corpus}: {size:,} bytes | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} CPUs | python {platform.python_version()}", file=sys.stderr)
    print("| tokenizer | vocabulary | tokens | build s | encode s | encode MB/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        shutil.rmtree(args.work / f"cache-{kind}", ignore_errors=True)
        code, _, rss, output = measured([sys.executable, __file__, str(args.corpus), "--work", str(args.work),
                                         "--encode-one", kind])
        if code:
            sys.exit(f"encoding with {kind} failed:\n{output}")
        r = json.loads(output.strip().splitlines()[-1])
        print(f"| {kind} | {r['vocab_size']:,} | {r['tokens']:,} | {r['build_s']:.1f} | {r['encode_s']:.1f} | "
              f"{r['mb_per_s']:.1f} | {rss:,.0f} |", flush=True)
    if args.steps:
        print("\n| word LSTM 2x200 run | steps | wall s | peak RSS MB |")
        print("|---|---|---|---|")
        for label in ("cold cache (builds vocabulary, encodes, trains)", "warm cache (trains)"):
            command = [sys.executable, "-m", "rnnlm", "train", "--run-dir", str(args.work / "run"), "--overwrite",
                       "--no-progress", f"data.corpus={args.corpus}", f"data.cache_dir={args.work / 'cache-train'}",
                       *TRAIN, f"train.max_steps={args.steps}"]
            code, seconds, rss, output = measured(command)
            if code:
                sys.exit(f"training failed:\n{output}")
            print(f"| {label} | {args.steps} | {seconds:.0f} | {rss:,.0f} |", flush=True)
            print(output.strip().splitlines()[0], file=sys.stderr)


if __name__ == "__main__":
    main()
