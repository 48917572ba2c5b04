"""How a tokenizer splits text: its pieces made visible, and the numbers that help choose a vocabulary.

`rnnlm tokenize` prints these: tokens per character and per byte (shorter sequences are cheaper to
train on and give a model more context per step), how much of the vocabulary the text uses, and how
many tokens are `<unk>` or byte fallback (characters the vocabulary does not cover).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnlm.config import Config
from rnnlm.data import corpus, registry
from rnnlm.data.corpus import Segment, Split
from rnnlm.data.tokenizers import Tokenizer

SEPARATOR = "│"
_VISIBLE = str.maketrans({" ": "\u2581", "\t": "⇥", "\r": "␍", "\n": "↵"})


@dataclass(frozen=True)
class TokenStats:
    tokens: int
    chars: int
    bytes: int
    vocab_size: int
    used: int  # distinct token ids that occur in the text
    fallback: int  # tokens that are <unk> or byte fallback

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.chars, 1)

    @property
    def tokens_per_byte(self) -> float:
        return self.tokens / max(self.bytes, 1)

    @property
    def fallback_share(self) -> float:
        return self.fallback / max(self.tokens, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "chars": self.chars,
            "bytes": self.bytes,
            "vocab_size": self.vocab_size,
            "vocab_used": self.used,
            "fallback_tokens": self.fallback,
            "fallback_share": self.fallback_share,
            "tokens_per_char": self.tokens_per_char,
            "tokens_per_byte": self.tokens_per_byte,
        }


@dataclass(frozen=True)
class Report:
    kind: str
    source: str  # what text was measured
    stats: TokenStats
    shown: str  # the head of that text, split into visible pieces


def token_stats(tokenizer: Tokenizer, split: Split, chunk: int = 1 << 22) -> TokenStats:
    """Count the split's tokens by id, a chunk of the memory map at a time."""
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for start in range(0, len(split.ids), chunk):
        counts += np.bincount(split.ids[start : start + chunk], minlength=tokenizer.vocab_size)
    fallback = int(counts[tokenizer.fallback_ids].sum())
    return TokenStats(
        int(counts.sum()), split.chars, split.bytes, tokenizer.vocab_size, int(np.count_nonzero(counts)), fallback
    )


def count_token(ids: np.ndarray, token_id: int, chunk: int = 1 << 22) -> int:
    """How often `token_id` occurs in `ids`, a chunk of the memory map at a time."""
    return sum(int(np.count_nonzero(ids[start : start + chunk] == token_id)) for start in range(0, len(ids), chunk))


def show_split(tokenizer: Tokenizer, text: str) -> str:
    """`text` as its tokens, separated by │, with spaces as ▁, tabs as ⇥ and each line end as ↵."""
    out = []
    for i in tokenizer.encode(text, partial=True).tolist():
        piece = tokenizer.piece(i).translate(_VISIBLE)
        out.append(piece + ("\n" if i == tokenizer.boundary_id else SEPARATOR))
    return "".join(out)


def report(
    config: Config,
    tokenizer: Tokenizer | None = None,
    text: Path | None = None,
    show: int = 300,
    log: registry.Log | None = None,
) -> Report:
    """Measure `tokenizer` (else the one `config` builds on its training split) on `text`.

    Without `text`, the corpus's validation split is measured: text the tokenizer was not built on.
    `log` hears of a corpus being downloaded.
    """
    cache_dir = registry.default_cache_dir(config.data.cache_dir)
    segments: dict[str, Segment] = {}
    if tokenizer is None or text is None:
        segments = corpus.split_segments(registry.resolve(config.data.corpus, cache_dir, log), config.data)
    if tokenizer is None:
        tokenizer = corpus.cached_tokenizer(config.tokenizer, segments["train"], cache_dir)
    if text is not None:
        segment, source = Segment(text, 0, text.stat().st_size), str(text)
    else:
        segment, source = segments["valid"], f"{config.data.corpus} (valid split)"
    stats = token_stats(tokenizer, corpus.encode_segment(segment, tokenizer, cache_dir))
    return Report(tokenizer.kind, source, stats, show_split(tokenizer, _head(segment, show)) if show else "")


def _head(segment: Segment, chars: int) -> str:
    """The first `chars` characters of the segment, ending at a line end when one falls inside them."""
    text = next(corpus.iter_text(segment), "")[:chars]
    cut = text.rfind("\n")
    return text[: cut + 1] if cut > 0 else text
