"""Write a large test corpus by concatenating the shared corpora until it reaches a size.

For the large-corpus benchmark (scripts/bench_encode.py): about 1 GB of real English text with
newlines, from tinyshakespeare, PTB and WikiText-2 repeated. Never commit its output.

    python scripts/make_big_corpus.py /tmp/rnnlm-big/big.txt --bytes 1000000000 --source ../shared/corpora
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SOURCES = ("tinyshakespeare/input.txt", "ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt",
           "wikitext-2/valid.txt", "wikitext-2/test.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="file to write (its folder is created)")
    parser.add_argument("--bytes", type=int, default=1_000_000_000,
                        help="write whole copies until the file holds at least this many bytes")
    parser.add_argument("--source", type=Path, default=Path(os.environ.get("RNNLM_DATA", "../shared/corpora")),
                        help="folder holding the shared corpora [default: $RNNLM_DATA or ../shared/corpora]")
    args = parser.parse_args()
    missing = [name for name in SOURCES if not (args.source / name).is_file()]
    if missing:
        sys.exit(f"{args.source} lacks {', '.join(missing)}")
    texts = [(args.source / name).read_bytes() for name in SOURCES]
    texts = [t if t.endswith(b"\n") else t + b"\n" for t in texts]  # each copy starts at a line start
    args.output.parent.mkdir(parents=True, exist_ok=True)
    written = rounds = 0
    with open(args.output, "wb") as out:
        while written < args.bytes:
            for text in texts:
                out.write(text)
                written += len(text)
            rounds += 1
    print(f"wrote {args.output}: {written:,} bytes, {rounds} copies of {len(SOURCES)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
