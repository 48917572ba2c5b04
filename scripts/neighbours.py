"""Nearest neighbours by cosine similarity in a GloVe or word2vec text file (what `rnnlm export-embeddings`
writes), to see what a word model's embedding learned:

    python scripts/neighbours.py ptb-vectors.txt monday million bank he [--top 8]

Prints one line per word: its nearest words, most similar first, with their cosines. The numbers of a run
are recorded in docs/embeddings.md.
"""

from __future__ import annotations

import argparse

import numpy as np

from rnnlm.embeddings import VectorFile


def read_all(path: str) -> tuple[list[str], np.ndarray]:
    """Every word of the file and its vector scaled to length 1 (V, D); words with spaces in them skipped."""
    with VectorFile(path) as file:
        words, vectors = zip(*file.vectors(), strict=True)
    matrix = np.stack(vectors)
    return list(words), matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def neighbours(words: list[str], unit: np.ndarray, word: str, top: int) -> list[tuple[str, float]]:
    """The `top` words whose vectors are nearest `word`'s by cosine, itself left out."""
    i = words.index(word)
    cosines = unit @ unit[i]
    cosines[i] = -np.inf
    best = np.argsort(-cosines)[:top]
    return [(words[j], float(cosines[j])) for j in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vectors", help="a GloVe or word2vec text file")
    parser.add_argument("words", nargs="+", help="the words to look up")
    parser.add_argument("--top", type=int, default=8, help="neighbours per word")
    args = parser.parse_args()
    words, unit = read_all(args.vectors)
    for word in args.words:
        if word not in words:
            print(f"{word}: not in {args.vectors}")
            continue
        shown = ", ".join(f"{other} {cosine:.2f}" for other, cosine in neighbours(words, unit, word, args.top))
        print(f"{word}: {shown}")


if __name__ == "__main__":
    main()
