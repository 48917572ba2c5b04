"""Tokenizers behind one protocol: characters, whitespace-separated words, and sentencepiece subwords.

A tokenizer's whole state is a plain dict (`state_dict`), so it travels inside a checkpoint and
`rnnlm sample` / `rnnlm eval` rebuild it without the corpus.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rnnlm.errors import CheckpointError, DataError

if TYPE_CHECKING:
    from rnnlm.data.subword import SentencePieceBuilder

UNK = "<unk>"
EOS = "<eos>"
REPLACEMENT = "\ufffd"  # how an unknown character is printed


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def unk_id(self) -> int: ...

    @property
    def boundary_id(self) -> int:
        """The token a text is conditioned on before its first token (a line end)."""

    @property
    def fallback_ids(self) -> list[int]:
        """Ids that stand for text the vocabulary lacks: `<unk>`, and sentencepiece's byte tokens."""

    def encode(self, text: str, partial: bool = False) -> np.ndarray:
        """Ids of `text`; `partial` means the text goes on (a prompt), so its last line is not closed."""

    def decode(self, ids: Iterable[int]) -> str: ...

    def stream_decoder(self) -> Callable[[int], str]:
        """A function fed one id at a time that returns the text to print for it."""

    def piece(self, i: int) -> str:
        """Token `i` as the vocabulary spells it, for display."""

    def unknown(self, text: str) -> list[str]:
        """The distinct characters or words of `text` that the vocabulary lacks."""

    def state_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One id per Unicode character seen in training, sorted by code point, plus `<unk>` last.

    Any text made of known characters round-trips exactly: newlines, tabs, emoji and CJK included.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("character vocabulary entries must be single characters")
        self._index = {c: i for i, c in enumerate(self.chars)}
        # id by code point, one slot past the highest known one standing for every other (<unk>):
        # encoding is then a single gather, at most 4.4 MB of table
        top = max((ord(c) for c in self.chars), default=-1)
        self._table = np.full(top + 2, len(self.chars), dtype=np.int32)
        self._table[[ord(c) for c in self.chars]] = np.arange(len(self.chars), dtype=np.int32)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def unk_id(self) -> int:
        return len(self.chars)

    @property
    def boundary_id(self) -> int:
        return self._index.get("\n", self.unk_id)

    @property
    def fallback_ids(self) -> list[int]:
        return [self.unk_id]

    def encode(self, text: str, partial: bool = False) -> np.ndarray:
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)  # lone surrogate -> unk
        return self._table[np.minimum(points, len(self._table) - 1)].astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.token(int(i)) for i in ids)

    def token(self, i: int) -> str:
        return self.chars[i] if i < len(self.chars) else REPLACEMENT

    def stream_decoder(self) -> Callable[[int], str]:
        return self.token

    def piece(self, i: int) -> str:
        return self.chars[i] if i < len(self.chars) else UNK

    def unknown(self, text: str) -> list[str]:
        return sorted(set(text) - set(self._index))

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": list(self.chars)}


class WordTokenizer:
    """Whitespace-separated words with one `<eos>` per line (the PTB / WikiText convention).

    Ids are sorted by training frequency, most frequent first (`<unk>` by the words it stands for).
    Lossy by design: runs of spaces collapse and rare words become `<unk>`.
    """

    kind = "word"

    def __init__(self, words: list[str]) -> None:
        if not all(isinstance(w, str) for w in words):
            raise ValueError("word vocabulary entries must be strings")
        if len(set(words)) != len(words):
            raise ValueError("word vocabulary has duplicate entries")
        if EOS not in words or UNK not in words:
            raise ValueError("word vocabulary must contain <eos> and <unk>")
        self.words = list(words)
        self._index = {w: i for i, w in enumerate(self.words)}
        self._eos = self._index[EOS]
        self._unk = self._index[UNK]

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def unk_id(self) -> int:
        return self._unk

    @property
    def boundary_id(self) -> int:
        return self._eos

    @property
    def fallback_ids(self) -> list[int]:
        return [self._unk]

    def encode(self, text: str, partial: bool = False) -> np.ndarray:
        get, unk, eos = self._index.get, self._unk, self._eos
        ids: list[int] = []
        for line in _lines(text):
            ids.extend([get(w, unk) for w in line.split()])
            ids.append(eos)
        if partial and text and not text.endswith("\n"):
            ids.pop()
        return np.array(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        piece = self.stream_decoder()
        return "".join(piece(int(i)) for i in ids)

    def stream_decoder(self) -> Callable[[int], str]:
        at_line_start = True

        def piece(i: int) -> str:
            nonlocal at_line_start
            if i == self._eos:
                at_line_start = True
                return "\n"
            text = self.words[i] if at_line_start else " " + self.words[i]
            at_line_start = False
            return text

        return piece

    def piece(self, i: int) -> str:
        return self.words[i]

    def unknown(self, text: str) -> list[str]:
        return sorted({w for w in text.split() if w not in self._index})

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "words": list(self.words)}


def _lines(text: str) -> list[str]:
    """Lines of `text`; a final line without a newline still counts, an empty tail does not."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


class CharVocabBuilder:
    def __init__(self) -> None:
        self.chars: set[str] = set()

    def add(self, text: str, partial: bool = False) -> None:
        self.chars.update(text)

    def build(self) -> CharTokenizer:
        return CharTokenizer(self.chars)


class WordVocabBuilder:
    def __init__(self, vocab_size: int = 0, min_count: int = 1) -> None:
        self.counts: Counter[str] = Counter()
        self.vocab_size = vocab_size
        self.min_count = min_count

    def add(self, text: str, partial: bool = False) -> None:
        """Count the words of `text`; `partial` means its last line goes on in the next piece."""
        lines = _lines(text)
        self.counts[EOS] += len(lines) - (partial and bool(text) and not text.endswith("\n"))
        for line in lines:
            self.counts.update(line.split())

    def build(self) -> WordTokenizer:
        """The kept words, `<eos>` and `<unk>`, ranked by count. `<unk>` counts every word it stands for:
        with a capped vocabulary it is often among the most frequent tokens, and its rank matters to
        the adaptive softmax, which gives the rarest ids the fewest dimensions."""
        kept = [w for w, n in sorted(self.counts.items(), key=_by_count) if n >= self.min_count and w not in (EOS, UNK)]
        if self.vocab_size:
            kept = kept[: max(self.vocab_size - 2, 0)]
        unk = sum(self.counts.values()) - self.counts[EOS] - sum(self.counts[w] for w in kept)
        ranked = sorted([(w, self.counts[w]) for w in kept] + [(EOS, self.counts[EOS]), (UNK, unk)], key=_by_count)
        return WordTokenizer([w for w, _ in ranked])


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    """Most frequent first, ties by spelling."""
    return -item[1], item[0]


def vocab_builder(
    kind: str, vocab_size: int = 0, min_count: int = 1, character_coverage: float = 0.9995
) -> CharVocabBuilder | WordVocabBuilder | SentencePieceBuilder:
    """A builder fed text with `add(text, partial)`, whose `build()` returns the tokenizer."""
    if kind == "char":
        return CharVocabBuilder()
    if kind == "word":
        return WordVocabBuilder(vocab_size, min_count)
    if kind in ("bpe", "unigram"):
        from rnnlm.data.subword import SentencePieceBuilder  # sentencepiece loads only when it is used

        return SentencePieceBuilder(kind, vocab_size, character_coverage)
    raise DataError(f"unknown tokenizer kind {kind!r}")


def from_state(state: Any) -> Tokenizer:
    """Rebuild a tokenizer from its `state_dict`; anything else a damaged checkpoint holds is a CheckpointError."""
    kind = state.get("kind") if isinstance(state, dict) else None
    try:
        if kind == "char":
            return CharTokenizer(state["chars"])
        if kind == "word":
            return WordTokenizer(state["words"])
        if kind in ("bpe", "unigram"):
            from rnnlm.data.subword import SentencePieceTokenizer

            return SentencePieceTokenizer(kind, state["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's {kind} tokenizer is damaged: {exc}") from None
    raise CheckpointError(f"the checkpoint holds an unknown tokenizer kind {kind!r}")


def fingerprint(tokenizer: Tokenizer) -> str:
    """A short hash of the tokenizer's state: the same vocabulary gives the same fingerprint."""
    blob = json.dumps(
        tokenizer.state_dict(),
        sort_keys=True,
        ensure_ascii=False,
        default=lambda value: hashlib.sha256(value).hexdigest(),
    ).encode("utf-8")  # model bytes
    return hashlib.sha256(blob).hexdigest()[:16]
