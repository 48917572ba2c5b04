"""Corpus text: read and validate it streaming, cut it into splits, encode it once into cached ids.

Token ids are written to a flat binary file (uint16 when the vocabulary fits, else uint32) under
`<cache>/ids/`, keyed by the text's file, byte range and modification time and by the tokenizer's
fingerprint, and read back as a memory map: later runs skip encoding and memory stays flat. The
tokenizer built on a training split is cached too (`<cache>/tokenizers/`), keyed by the split and
the tokenizer settings, so later runs need not read the split again nor retrain sentencepiece.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from rnnlm.config import DataConfig, TokenizerConfig
from rnnlm.data import registry
from rnnlm.data.tokenizers import Tokenizer, fingerprint, from_state, vocab_builder
from rnnlm.errors import CheckpointError, DataError, storage_error

BLOCK = 4 << 20  # bytes read at a time
MAX_LINE = 4 << 20  # characters: a longer line is handed out in pieces, so memory stays bounded
SAMPLE_WINDOW = 64 << 10  # bytes: subword tokenizers train on windows this long spread over the split
CACHE_VERSION = 1
# the settings each kind of tokenizer depends on: the others do not make a new cache entry
_SETTINGS = {
    "char": ("kind",),
    "word": ("kind", "vocab_size", "min_count"),
    "bpe": ("kind", "vocab_size", "character_coverage", "sample_bytes"),
}
_SETTINGS["unigram"] = _SETTINGS["bpe"]
TOKENIZER_CACHE_VERSION = 2  # raise it when tokenizers are built differently, so older cached ones are not used


@dataclass(frozen=True)
class Segment:
    """A byte range of a file that holds one split's text."""

    path: Path
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class Split:
    ids: np.ndarray  # (N,) token ids, usually a read-only memory map
    chars: int  # Unicode characters of the text the ids encode
    bytes: int  # UTF-8 bytes of that text
    sha256: str = ""  # of the ids' bytes, as the cache verified them on load ("" for ids built in memory)


@dataclass
class Corpus:
    tokenizer: Tokenizer
    splits: dict[str, Split]


def load_corpus(
    data: DataConfig,
    tokenizer_config: TokenizerConfig,
    tokenizer: Tokenizer | None = None,
    splits: tuple[str, ...] = registry.SPLITS,
    log: registry.Log | None = None,
) -> Corpus:
    """Resolve the corpus, build the tokenizer on its training split unless given, encode `splits`.
    `log` hears of a corpus being downloaded."""
    cache_dir = registry.default_cache_dir(data.cache_dir)
    remove_leftovers(cache_dir)
    try:
        return _load_corpus(data, tokenizer_config, tokenizer, splits, cache_dir, log)
    except PermissionError as exc:  # the cache's own writes say so themselves: this is the text
        raise storage_error(exc, doing="reading") from None


def _load_corpus(
    data: DataConfig,
    tokenizer_config: TokenizerConfig,
    tokenizer: Tokenizer | None,
    splits: tuple[str, ...],
    cache_dir: Path,
    log: registry.Log | None,
) -> Corpus:
    segments = split_segments(registry.resolve(data.corpus, cache_dir, log), data)
    if tokenizer is None:
        tokenizer = cached_tokenizer(tokenizer_config, segments["train"], cache_dir)
    encoded = {}
    for name in splits:
        if name not in segments:
            if name == "train" or name == "valid":
                raise DataError(f"corpus {data.corpus!r} has no {name} split")
            continue
        encoded[name] = encode_segment(segments[name], tokenizer, cache_dir)
    return Corpus(tokenizer, encoded)


def build_tokenizer(config: TokenizerConfig, segment: Segment) -> Tokenizer:
    """Build the tokenizer `config` asks for on `segment` (subword kinds on a sample of it)."""
    builder = vocab_builder(config.kind, config.vocab_size, config.min_count, config.character_coverage)
    subword = config.kind in ("bpe", "unigram")
    for part in sample_segments(segment, config.sample_bytes) if subword else [segment]:
        for text, goes_on in iter_pieces(part):
            builder.add(text, goes_on)
    return builder.build()


def cached_tokenizer(config: TokenizerConfig, segment: Segment, cache_dir: Path) -> Tokenizer:
    """The tokenizer built on `segment`, from the cache when this split and these settings made one."""
    stat = segment.path.stat()
    key_fields = {
        "version": TOKENIZER_CACHE_VERSION,
        "path": str(segment.path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "start": segment.start,
        "end": segment.end,
        "tokenizer": {k: v for k, v in dataclasses.asdict(config).items() if k in _SETTINGS[config.kind]},
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir / "tokenizers" / f"{key}.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"), object_hook=_from_json)
        return from_state(state)
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        pass  # missing or damaged: build it again
    tokenizer = build_tokenizer(config, segment)
    _write_atomic(path, json.dumps(tokenizer.state_dict(), default=_to_json).encode("utf-8"))
    return tokenizer


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes):  # a sentencepiece model
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"cannot store {type(value).__name__} in a tokenizer cache")


def _from_json(obj: dict[str, Any]) -> Any:
    return base64.b64decode(obj["__bytes__"], validate=True) if set(obj) == {"__bytes__"} else obj


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f"{path.name}.{registry.writer_tag()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise _cache_error(exc, path) from None


def _cache_error(exc: OSError, path: Path) -> Exception:
    room = "free space there or " if exc.errno == errno.ENOSPC else ""
    return storage_error(exc, path, hint=f"{room}point data.cache_dir (or RNNLM_CACHE) at a folder you can write")


def remove_leftovers(cache_dir: Path) -> None:
    """Delete the partial files (`NAME.HOST-PID.part`, `NAME.HOST-PID.download`) that killed processes of this
    machine left in the cache. A file whose process still runs is being written and stays, and so does
    another host's (a cache shared over a network disk): its process id means nothing here.
    """
    host, _ = registry.writer_tag().rsplit("-", 1)
    for pattern in ("ids/*.part", "tokenizers/*.part", "*/*.download"):
        for path in cache_dir.glob(pattern):
            writer = path.name.rsplit(".", 2)[-2] if path.name.count(".") >= 2 else ""
            writer_host, _, pid = writer.rpartition("-")
            if writer_host == host and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):  # gone already, or not ours to remove: it does no harm
                    path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def sample_segments(segment: Segment, sample_bytes: int, window: int = SAMPLE_WINDOW) -> list[Segment]:
    """About `sample_bytes` of `segment` as windows spread evenly over it, each from a line start to a line end.

    Reads only the sample, so a subword tokenizer trains on a gigabyte corpus in bounded time and memory.
    """
    if not sample_bytes or segment.size <= sample_bytes:
        return [segment]
    count = -(-sample_bytes // window)
    stride = segment.size / count
    parts: list[Segment] = []
    previous_end = segment.start
    for k in range(count):
        start = max(_line_start_near(segment.path, segment.start + int(k * stride), window), previous_end)
        end = min(_line_start_near(segment.path, start + window, window), segment.end)
        if end > start:
            parts.append(Segment(segment.path, start, end))
            previous_end = end
    return parts


def _line_start_near(path: Path, offset: int, limit: int) -> int:
    """The first line start at or after `offset` within `limit` bytes, else the character boundary there."""
    with open(path, "rb") as f:
        position = max(offset - 1, 0)
        f.seek(position)
        found = f.read(limit).find(b"\n")
    return position + found + 1 if found >= 0 and offset > 0 else _char_boundary(path, offset)


def split_segments(source: registry.Source, data: DataConfig) -> dict[str, Segment]:
    """One Segment per split; a single file is cut contiguously at line ends (train, valid, test)."""
    if source.single is None:
        return {name: Segment(path, 0, path.stat().st_size) for name, path in source.files.items()}
    path = source.single
    size = path.stat().st_size
    if source.byte_splits is not None:
        cuts = [_char_boundary(path, min(c, size)) for c in source.byte_splits]
    else:
        train_share = 1.0 - data.valid_fraction - data.test_fraction
        cuts = [_line_end(path, int(size * train_share)), _line_end(path, int(size * (1.0 - data.test_fraction)))]
    cuts[1] = max(cuts)
    bounds = [0, *cuts, size]
    return {name: Segment(path, bounds[i], bounds[i + 1]) for i, name in enumerate(registry.SPLITS)}


def _line_end(path: Path, offset: int) -> int:
    """The offset just after the first newline at or after `offset - 1` (else a character boundary)."""
    with open(path, "rb") as f:
        position = max(offset - 1, 0)
        f.seek(position)
        while block := f.read(1 << 16):
            found = block.find(b"\n")
            if found >= 0:
                return position + found + 1
            position += len(block)
    return _char_boundary(path, offset)


def _char_boundary(path: Path, offset: int) -> int:
    """The first offset at or after `offset` that does not fall inside a UTF-8 sequence."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(4)
    skip = 0
    while skip < len(tail) and tail[skip] & 0xC0 == 0x80:
        skip += 1
    return offset + skip


def iter_text(segment: Segment, block_size: int = BLOCK, max_line: int = MAX_LINE) -> Iterator[str]:
    """The segment's text in pieces that end at line ends, checked to be UTF-8 without NUL bytes.

    A line longer than `max_line` characters (a corpus without newlines, like text8) comes in
    pieces cut before a space, so no piece holds more than about `max_line + block_size` characters.
    """
    carry_bytes = b""
    carry_text = ""
    with open(segment.path, "rb") as f:
        f.seek(segment.start)
        position = segment.start  # file offset of carry_bytes[0]
        remaining = segment.size
        while remaining > 0 or carry_bytes:
            block = f.read(min(block_size, remaining)) if remaining > 0 else b""
            if remaining > 0 and not block:
                raise DataError(
                    f"{segment.path} ended at byte offset {position + len(carry_bytes)} instead of "
                    f"{segment.end}: it changed while it was read; run again"
                )
            remaining -= len(block)
            final = remaining <= 0
            data = carry_bytes + block
            nul = data.find(b"\0")
            if nul >= 0:
                raise DataError(
                    f"{segment.path} holds a NUL byte at byte offset {position + nul}: it looks like a "
                    f"binary file, not text"
                )
            try:
                text, used = data.decode("utf-8"), len(data)
            except UnicodeDecodeError as exc:
                if final or exc.reason != "unexpected end of data" or exc.start < len(data) - 3:
                    raise DataError(
                        f"{segment.path} is not UTF-8 text: invalid byte 0x{data[exc.start]:02x} at byte "
                        f"offset {position + exc.start}"
                    ) from None
                text, used = data[: exc.start].decode("utf-8"), exc.start
            carry_bytes = data[used:]
            position += used
            text = carry_text + text
            cut = len(text) if final else text.rfind("\n") + 1
            if cut == 0 and len(text) > max_line:
                space = text.rfind(" ", 1)
                cut = space if space > 0 else len(text)
            if cut > 0:
                yield text[:cut]
            carry_text = text[cut:]
            if final:
                break


def iter_pieces(segment: Segment) -> Iterator[tuple[str, bool]]:
    """`iter_text`'s pieces, each with whether it stops inside a line that the next piece goes on with."""
    previous = None
    for text in iter_text(segment):
        if previous is not None:
            yield previous, not previous.endswith("\n")
        previous = text
    if previous is not None:
        yield previous, False


def encode_segment(segment: Segment, tokenizer: Tokenizer, cache_dir: Path) -> Split:
    """Token ids of a segment, from the cache when a complete, matching entry exists."""
    stat = segment.path.stat()
    key_fields = {
        "version": CACHE_VERSION,
        "path": str(segment.path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "start": segment.start,
        "end": segment.end,
        "tokenizer": fingerprint(tokenizer),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:32]
    ids_path = cache_dir / "ids" / f"{key}.ids"
    meta_path = ids_path.with_suffix(".json")
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)
    meta = _read_meta(meta_path, ids_path, dtype, tokenizer.vocab_size)
    if meta is None:
        meta = _encode_to_file(segment, tokenizer, ids_path, dtype)
        _write_atomic(meta_path, json.dumps(meta).encode())
    ids = _open_ids(ids_path, dtype, meta["count"])
    return Split(ids, meta["chars"], meta["bytes"], meta["sha256"])


def encode_text_file(path: Path, tokenizer: Tokenizer, cache_dir: Path) -> Split:
    """Encode a whole text file (for `rnnlm eval --text`)."""
    remove_leftovers(cache_dir)
    try:
        return encode_segment(Segment(path, 0, path.stat().st_size), tokenizer, cache_dir)
    except PermissionError as exc:
        raise storage_error(exc, doing="reading") from None


def _read_meta(meta_path: Path, ids_path: Path, dtype: np.dtype, vocab_size: int) -> dict | None:
    """The cache entry's metadata if it is complete and its ids file is the one written; None: rebuild it.

    The ids file is hashed on every load (sha256 runs at about 1.4 GB/s, well below the cost of encoding
    the text): a file changed in place, or ids beyond the vocabulary, would otherwise train on wrong data
    or crash in the embedding. An entry without a checksum (an older rnnlm's) is rebuilt.
    """
    try:
        meta = json.loads(meta_path.read_text())
        complete = meta["dtype"] == dtype.name and ids_path.stat().st_size == meta["count"] * dtype.itemsize
        if not complete or not isinstance(meta.get("sha256"), str):
            return None
        digest, largest = _digest_ids(ids_path, dtype)
        return meta if digest == meta["sha256"] and largest < vocab_size else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _digest_ids(path: Path, dtype: np.dtype) -> tuple[str, int]:
    """The sha256 of an ids file and its largest id (-1 if empty), in one pass."""
    digest, largest = hashlib.sha256(), -1
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
            largest = max(largest, int(np.frombuffer(block, dtype=dtype).max()))
    return digest.hexdigest(), largest


def _encode_to_file(segment: Segment, tokenizer: Tokenizer, ids_path: Path, dtype: np.dtype) -> dict:
    partial = ids_path.with_name(f"{ids_path.name}.{registry.writer_tag()}.part")
    try:
        ids_path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as out:
            count, chars, digest = _write_ids(segment, tokenizer, out, dtype)
        os.replace(partial, ids_path)
    except OSError as exc:
        if isinstance(exc, PermissionError) and str(exc.filename) == str(segment.path):
            raise  # the text, not the cache: load_corpus says so
        partial.unlink(missing_ok=True)
        raise _cache_error(exc, ids_path) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {"dtype": dtype.name, "count": count, "chars": chars, "bytes": segment.size, "sha256": digest}


def _write_ids(segment: Segment, tokenizer: Tokenizer, out: BinaryIO, dtype: np.dtype) -> tuple[int, int, str]:
    """Encode the segment piece by piece into `out`; the token and character counts and the bytes' sha256."""
    count = chars = 0
    digest = hashlib.sha256()
    show = segment.size > 32 << 20
    with tqdm(
        total=segment.size,
        unit="B",
        unit_scale=True,
        desc="encoding",
        file=sys.stderr,
        disable=None if show else True,
        leave=False,
    ) as bar:
        for text, goes_on in iter_pieces(segment):
            data = tokenizer.encode(text, partial=goes_on).astype(dtype, copy=False).tobytes()
            out.write(data)
            digest.update(data)
            count += len(data) // dtype.itemsize
            chars += len(text)
            bar.update(len(text.encode("utf-8")) if show else 0)
    return count, chars, digest.hexdigest()


def _open_ids(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
