"""Word vectors in the GloVe and word2vec text formats: read into a word model's embedding when a fresh run
builds it (`model.init_embeddings`), and written out from a checkpoint (`rnnlm export-embeddings`).

Both formats hold one word a line, the word and then its D numbers, separated by spaces; word2vec's text
format adds a first line `COUNT D`. A file can be gigabytes (GloVe 840B: 5.6 GB), so it is read line by
line, and only the lines of vocabulary words are parsed and kept: a malformed line of another word goes
unnoticed. The word is what precedes the last D numbers, so the words with spaces in them that GloVe
840B holds (". . .") are read, and match no vocabulary word (a word tokenizer's words never hold one).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import torch

from rnnlm.data.tokenizers import EOS, Tokenizer
from rnnlm.errors import ConfigError, DataError, UsageError, storage_error
from rnnlm.models import LanguageModel

FORMATS = ("glove", "word2vec")
# 9 significant digits read back as the same float32 (the model's dtype): an exported file round-trips
DIGITS = ".9g"
# word2vec's C tool writes the line end as "</s>": the spelling <eos> takes when a file lacks "<eos>"
ALIASES = {EOS: ("</s>",)}
# the name both models give their input embedding (a tied decoder shares it); the checkpoint's name too
EMBEDDING = "embedding.weight"


@dataclass(frozen=True)
class Coverage:
    """How many of a vocabulary's words a file of vectors held."""

    path: str
    vocab_size: int
    found: int  # vocabulary words that got the file's vector
    lowercase: int  # of those, found under their lowercase spelling only
    tied: bool = False  # the decoder shares the embedding (model.tie_weights)

    def describe(self) -> str:
        share = 100 * self.found / self.vocab_size
        return (
            f"{self.found:,} of {self.vocab_size:,} vocabulary words found in {self.path} ({share:.1f}%); the other "
            f"{self.vocab_size - self.found:,} keep their random init (exact spelling first, then lowercase: "
            f"{self.lowercase:,} found lowercased)"
            + (
                "; the decoder shares the embedding (model.tie_weights), so it starts from them too"
                if self.tied
                else ""
            )
        )


class VectorFile:
    """A word-vector text file, open for one pass: `dim` is known once it is open (from word2vec's header
    or GloVe's first line), before the rest is read."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            # bytes: words are matched undecoded, numbers parse as bytes; closed by close() (a context manager)
            self._file: BinaryIO = open(path, "rb")  # noqa: SIM115
        except IsADirectoryError:
            raise DataError(f"{path} is a folder, not a file of word vectors") from None
        except FileNotFoundError:
            raise DataError(f"the word-vector file {path} does not exist (model.init_embeddings)") from None
        except OSError as exc:
            raise storage_error(exc, path, doing="reading") from None
        self.line_number = 0
        self.count: int | None = None  # word2vec's header: the number of vectors it promises
        try:
            self._read_head()
        except BaseException:
            self.close()
            raise

    def _read_head(self) -> None:
        """The dimension, from word2vec's header or GloVe's first line; then the first vector line, always
        parsed, so that a binary word2vec file or another format stops here, before the rest is read."""
        first = self._next_line()
        if first is None:
            raise DataError(f"the word-vector file {self.path} is empty")
        fields = first.split()
        if len(fields) == 2 and all(f.isdigit() for f in fields):  # word2vec: "COUNT DIM"
            self.count, self.dim = int(fields[0]), int(fields[1])
            first = self._next_line()
        else:
            self.dim = len(fields) - 1
        if self.dim < 1:
            raise DataError(f"{self._where()}: expected a word and its numbers, found {first!r:.60}")
        self._first = None if first is None else (self._parse(first), self.line_number)

    def __enter__(self) -> VectorFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def vectors(self, wanted: set[bytes] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(word, vector (D,) float64) for each line whose word is in `wanted` (every line when None)."""
        read = 0
        if self._first is not None:
            read = 1
            parsed = self._first[0]
            if parsed is not None and (wanted is None or parsed[0] in wanted):
                yield self._decode(parsed[0], self._first[1]), parsed[1]
        while (line := self._next_line()) is not None:
            read += 1
            head = line.split(None, 1)
            if wanted is not None and head[0] not in wanted:
                continue  # skipped unparsed: most of a large file
            parsed = self._parse(line)
            if parsed is not None:
                yield self._decode(parsed[0], self.line_number), parsed[1]
        if self.count is not None and read != self.count:
            raise DataError(
                f"{self.path}: its word2vec header promises {self.count:,} vectors, it holds {read:,}: "
                f"the file is truncated or was edited"
            )

    def _next_line(self) -> bytes | None:
        """The next line that is not blank, or None at the end."""
        try:
            for line in self._file:
                self.line_number += 1
                if not line.isspace():
                    return line
        except OSError as exc:
            raise storage_error(exc, self.path, doing="reading") from None
        return None

    def _parse(self, line: bytes) -> tuple[bytes, np.ndarray] | None:
        """(word, vector) of one line; None for a word with spaces in it, which no vocabulary holds."""
        fields = line.split()
        if len(fields) < self.dim + 1:
            raise DataError(
                f"{self._where()}: expected a word and {self.dim} numbers (as the "
                f"{'header' if self.count is not None else 'first line'} says), found {len(fields)} fields"
            )
        try:
            vector = np.array([float(x) for x in fields[-self.dim :]])
        except ValueError:
            raise DataError(
                f"{self._where()}: expected a word and {self.dim} numbers, found {line[:60]!r} "
                f"(only the text formats are read, uncompressed; gensim writes one with binary=False)"
            ) from None
        if not np.isfinite(vector).all():
            raise DataError(f"{self._where()}: a vector holds a number that is not finite")
        return (fields[0], vector) if len(fields) == self.dim + 1 else None

    def _decode(self, word: bytes, line_number: int) -> str:
        try:
            return word.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{self.path}:{line_number}: the word is not UTF-8 text") from None

    def _where(self) -> str:
        return f"{self.path}:{self.line_number}"


def match_vectors(file: VectorFile, words: list[str]) -> tuple[dict[int, np.ndarray], Coverage]:
    """The file's vector for each vocabulary id it has one for: the word's exact spelling first, then its
    lowercase form (GloVe 6B's words are lowercased), then an alias (ALIASES); the first line of a word wins."""
    spellings = [[w, *([w.lower()] if w.lower() != w else []), *ALIASES.get(w, ())] for w in words]
    wanted = {s.encode("utf-8") for candidates in spellings for s in candidates}
    found: dict[str, np.ndarray] = {}
    for word, vector in file.vectors(wanted):
        found.setdefault(word, vector)
    rows, lowercase = {}, 0
    for i, candidates in enumerate(spellings):
        hit = next((s for s in candidates if s in found), None)
        if hit is not None:
            rows[i] = found[hit]
            lowercase += hit != candidates[0] and hit == candidates[0].lower()
    return rows, Coverage(file.path, len(words), len(rows), lowercase)


def init_embeddings(model: LanguageModel, tokenizer: Tokenizer, path: str | Path) -> Coverage:
    """Set the embedding rows of the vocabulary words `path` has vectors for; the others keep their draw.

    Works for both models (one embedding; the bidirectional model's two stacks share it); a tied decoder
    shares the matrix, so it starts from the same vectors. Raises ConfigError when the file's vectors
    are not `model.embed_size` long or the tokenizer is not a word tokenizer; DataError for the file.
    """
    if tokenizer.kind != "word":
        raise ConfigError(_word_models_only(tokenizer.kind, "model.init_embeddings"))
    weight = model.get_parameter(EMBEDDING)
    vocab_size, size = weight.shape
    with VectorFile(path) as file:
        if file.dim != size:
            tied = " (and model.hidden_size or model.output_size, which model.tie_weights keeps equal)"
            raise ConfigError(
                f"{path} holds {file.dim}-dimensional vectors, the model's embedding is {size} "
                f"(model.embed_size): set model.embed_size={file.dim}{tied if model.config.tie_weights else ''}, "
                f"or use vectors of size {size}"
            )
        rows, coverage = match_vectors(file, [tokenizer.piece(i) for i in range(vocab_size)])
    if not rows:
        raise DataError(f"none of the {vocab_size:,} vocabulary words is in {path}: is it the right file?")
    ids = sorted(rows)
    with torch.no_grad():
        weight[torch.tensor(ids)] = torch.from_numpy(np.stack([rows[i] for i in ids])).to(weight)
    return dataclasses.replace(coverage, tied=model.config.tie_weights)


def _word_models_only(kind: str, what: str) -> str:
    return (
        f"{what} needs a word model (tokenizer.kind word), not {kind}: word vectors are whole words, and "
        f"{'characters' if kind == 'char' else 'subword pieces'} would match them only by accident"
    )


def write_vectors(path: str | Path, words: list[str], matrix: np.ndarray, form: str) -> None:
    """Write one line per word, atomically (a temp file, then a rename): a failure leaves `path` as it was."""
    if form not in FORMATS:
        raise UsageError(f"unknown word-vector format {form!r} (choose {', '.join(FORMATS)})")
    spaced = next((w for w in words if not w or any(c.isspace() for c in w)), None)
    if spaced is not None:  # a word tokenizer never makes one; the format could not hold it
        raise UsageError(f"the vocabulary word {spaced!r} is empty or holds whitespace: the text formats cannot")
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "w", encoding="utf-8", newline="\n") as f:
            if form == "word2vec":
                f.write(f"{len(words)} {matrix.shape[1]}\n")
            for word, row in zip(words, matrix.tolist(), strict=True):
                f.write(word + " " + " ".join(format(x, DIGITS) for x in row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as exc:
        raise storage_error(exc, path) from None
    finally:
        temp.unlink(missing_ok=True)


def export_embeddings(checkpoint: str | Path, out: str | Path, form: str, overwrite: bool = False) -> tuple[int, int]:
    """Write a word checkpoint's input embedding (NT-ASGD's average, as `sample` and `eval` use) to `out`;
    (words, dimensions) written. Every vocabulary word is written, `<unk>` and `<eos>` too."""
    from rnnlm.checkpoint import load_model  # checkpoint imports the models: only this command needs it

    if Path(out).exists() and not overwrite:
        raise UsageError(f"{out} exists: pass --overwrite to replace it")
    loaded = load_model(checkpoint)
    if loaded.tokenizer.kind != "word":
        raise UsageError(_word_models_only(loaded.tokenizer.kind, "export-embeddings"))
    matrix = loaded.model.get_parameter(EMBEDDING).detach().float().cpu().numpy()
    words = [loaded.tokenizer.piece(i) for i in range(matrix.shape[0])]
    write_vectors(out, words, matrix, form)
    return matrix.shape[0], matrix.shape[1]
