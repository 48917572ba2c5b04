"""Subword tokenizers through sentencepiece (Kudo & Richardson 2018), made lossless, and their training.

Two kinds: byte-pair encoding (Sennrich et al. 2016) and the unigram language model (Kudo 2018).

sentencepiece's defaults lose text: NFKC normalisation, folded whitespace, `<unk>` for characters it
never saw. Here normalisation is the identity, whitespace is kept, unseen characters fall back to
their UTF-8 bytes and the newline is a token of its own, so `decode(encode(text)) == text` always.
"""

from __future__ import annotations

import codecs
import io
import itertools
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import sentencepiece as spm

from rnnlm.errors import DataError

KINDS = ("bpe", "unigram")
DEFAULT_VOCAB_SIZE = 4000  # what tokenizer.vocab_size 0 asks for
NEWLINE = "\n"
SPACE_MARK = "\u2581"  # sentencepiece writes a space as this, so a literal one must travel as its bytes
REPLACEMENT = "\ufffd"
UNK_PIECE = "<unk>"
# sentencepiece deletes its meta pieces' spellings from the training text (and PTB and WikiText spell
# rare words "<unk>"), so the model's own unknown piece is spelled as a noncharacter that text never
# holds. Literal "<s>", "</s>" and "<0x41>"-like strings are still left out of training, never of encoding.
UNK_SPELLING = "\U0010ffff"
# sentencepiece silently skips training sentences longer than max_sentence_length bytes, so lines are
# cut into chunks of at most this many characters (4 bytes each at most) before training.
CHUNK_CHARS = 4096
_SPECIAL = re.compile(f"({SPACE_MARK}|[\ud800-\udfff])")  # a literal space mark, or a lone surrogate


class SentencePieceTokenizer:
    """A sentencepiece model whose every piece maps back to exact bytes.

    Ids are the model's own: `<unk>` is 0, the newline is a user-defined piece, 256 byte pieces
    stand for any character outside the vocabulary. A line is encoded on its own (in chunks cut
    before a space when it is long, which changes nothing because no piece spans a space boundary),
    so text cut at line ends encodes to the same ids piece by piece as in one go.
    """

    def __init__(self, kind: str, model: bytes) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown sentencepiece kind {kind!r}")
        if not isinstance(model, bytes):
            raise ValueError("the sentencepiece model must be bytes")
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model)
        except (RuntimeError, TypeError, OSError):
            raise ValueError("sentencepiece cannot read the model") from None
        self.kind = kind
        self.model = model
        size = self._sp.get_piece_size()
        self._unk = self._sp.unk_id()
        self._newline = self._sp.piece_to_id(NEWLINE)
        byte_ids = {int(self._sp.id_to_piece(i)[3:5], 16): i for i in range(size) if self._sp.is_byte(i)}
        if self._newline == self._unk or sorted(byte_ids) != list(range(256)):
            raise ValueError("the sentencepiece model lacks the newline piece or byte fallback")
        self._byte_ids = np.array([byte_ids[b] for b in range(256)], dtype=np.int64)
        self._mark_ids = self._byte_ids[list(SPACE_MARK.encode("utf-8"))].tolist()
        self._bytes = [self._piece_bytes(i) for i in range(size)]

    def _piece_bytes(self, i: int) -> bytes:
        sp = self._sp
        if sp.is_byte(i):
            return bytes([int(sp.id_to_piece(i)[3:5], 16)])
        if sp.is_unknown(i):
            return REPLACEMENT.encode("utf-8")
        if sp.is_control(i) or sp.is_unused(i):
            return b""
        return sp.id_to_piece(i).replace(SPACE_MARK, " ").encode("utf-8")

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    @property
    def unk_id(self) -> int:
        return self._unk

    @property
    def boundary_id(self) -> int:
        return self._newline

    @property
    def fallback_ids(self) -> list[int]:
        return [self._unk, *self._byte_ids.tolist()]

    def encode(self, text: str, partial: bool = False) -> np.ndarray:
        # `partial` changes nothing: a line is closed only by its own newline token
        lines = text.split(NEWLINE)
        if _SPECIAL.search(text) is None and max(map(len, lines)) <= CHUNK_CHARS:
            encoded = self._sp.encode(lines, out_type=int)  # the usual case: one call for every line
        else:
            encoded = [self._encode_line(line) for line in lines]
        for ids in encoded[:-1]:
            ids.append(self._newline)
        return np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64)

    def _encode_line(self, line: str) -> list[int]:
        """Ids of a line that is long (encoded in chunks) or holds literal space marks or lone surrogates."""
        parts: list[str | list[int]] = []  # text for sentencepiece, or the ids it cannot produce itself
        for k, part in enumerate(_SPECIAL.split(line)):
            if k % 2 == 0:
                parts.extend(chunks(part, CHUNK_CHARS))
            else:  # a literal space mark travels as its bytes; a lone surrogate is not text: <unk>
                parts.append(self._mark_ids if part == SPACE_MARK else [self._unk])
        strings = [p for p in parts if isinstance(p, str)]
        encoded = iter(self._sp.encode(strings, out_type=int) if strings else ())
        ids: list[int] = []
        for part in parts:
            ids.extend(next(encoded) if isinstance(part, str) else part)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        table = self._bytes
        return b"".join(table[int(i)] for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> Callable[[int], str]:
        # a character outside the vocabulary arrives as 2-4 byte tokens: print it once it is whole
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        table = self._bytes
        return lambda i: decoder.decode(table[i])

    def piece(self, i: int) -> str:
        return UNK_PIECE if i == self._unk else self._sp.id_to_piece(i)

    def unknown(self, text: str) -> list[str]:
        # byte fallback spells every character; only lone surrogates (not UTF-8 at all) become <unk>
        return sorted(set(_SPECIAL.findall(text)) - {SPACE_MARK})

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model}


def chunks(line: str, size: int) -> Iterator[str]:
    """`line` in pieces of at most `size` characters, cut before a space where there is one."""
    start, end = 0, len(line)
    while end - start > size:
        cut = line.rfind(" ", start + 1, start + size + 1)
        cut = cut if cut > start else start + size
        yield line[start:cut]
        start = cut
    if end > start:
        yield line[start:end]


class SentencePieceBuilder:
    """Collects training sentences (lines, cut into chunks) and trains the model on them."""

    def __init__(self, kind: str, vocab_size: int = 0, character_coverage: float = 0.9995) -> None:
        self.kind = kind
        self.vocab_size = vocab_size
        self.character_coverage = character_coverage
        self.sentences: list[str] = []

    def add(self, text: str, partial: bool = False) -> None:
        for line in text.split(NEWLINE):
            self.sentences.extend(chunks(line, CHUNK_CHARS))

    def build(self) -> SentencePieceTokenizer:
        return train(self.kind, self.sentences, self.vocab_size, self.character_coverage)


def train(
    kind: str, sentences: list[str], vocab_size: int = 0, character_coverage: float = 0.9995
) -> SentencePieceTokenizer:
    """Train a lossless `kind` model; vocab_size 0 means DEFAULT_VOCAB_SIZE or the most the text supports.

    Raises DataError, never sentencepiece's own errors, when the text cannot give that vocabulary.
    """
    if not any(sentences):
        raise DataError(f"the training split has no text to train a {kind} tokenizer on")
    requested = vocab_size or DEFAULT_VOCAB_SIZE
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=kind,
            vocab_size=requested,
            hard_vocab_limit=False,  # a smaller vocabulary instead of an error: we report it below
            character_coverage=character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            user_defined_symbols=NEWLINE,
            unk_id=0,
            unk_piece=UNK_SPELLING,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            unk_surface=REPLACEMENT,
            max_sentence_length=4 * CHUNK_CHARS,
            num_threads=min(os.cpu_count() or 1, 16),
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise DataError(_explain(exc, kind, requested, character_coverage)) from None
    tokenizer = SentencePieceTokenizer(kind, model.getvalue())
    if vocab_size and tokenizer.vocab_size < vocab_size:
        raise DataError(
            f"tokenizer.vocab_size {vocab_size:,} is more than the training text supports for a {kind} "
            f"tokenizer: the largest that works is {tokenizer.vocab_size:,}; set tokenizer.vocab_size="
            f"{tokenizer.vocab_size} or lower, or train on more text (tokenizer.sample_bytes)"
        )
    return tokenizer


def _explain(exc: RuntimeError, kind: str, requested: int, coverage: float) -> str:
    """sentencepiece's internal error as a message that says which setting to change."""
    message = str(exc)
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
        return (
            f"tokenizer.vocab_size {requested:,} is too small for a {kind} tokenizer: it needs at least "
            f"{int(too_small.group(2)):,} (256 byte tokens, <unk>, the newline, and the characters that make "
            f"up {coverage:.2%} of the training text); raise tokenizer.vocab_size or lower "
            f"tokenizer.character_coverage"
        )
    reason = message.rsplit("]", 1)[-1].strip() or message.strip()
    return f"sentencepiece could not train a {kind} tokenizer on the training split: {reason}"
