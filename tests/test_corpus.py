"""Corpus: contiguous splits at line ends, streaming UTF-8 validation, and the encoded-ids cache."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rnnlm.config import DataConfig, TokenizerConfig
from rnnlm.data import corpus, registry
from rnnlm.data.corpus import Segment, encode_segment, encode_text_file, iter_text, load_corpus, split_segments
from rnnlm.data.tokenizers import CharTokenizer, WordTokenizer, vocab_builder
from rnnlm.errors import DataError

CHAR = TokenizerConfig(kind="char")
WORD = TokenizerConfig(kind="word")


def data_config(path: Path, valid: float = 0.1, test: float = 0.1) -> DataConfig:
    return DataConfig(corpus=str(path), valid_fraction=valid, test_fraction=test)


def segments_of(path: Path, valid: float = 0.1, test: float = 0.1) -> dict[str, Segment]:
    data = data_config(path, valid, test)
    return split_segments(registry.resolve(data.corpus, registry.default_cache_dir()), data)


def cache_ids_files() -> list[Path]:
    return sorted((registry.default_cache_dir() / "ids").glob("*.ids"))


def write_bytes(tmp_path: Path, data: bytes, name: str = "text.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def whole(path: Path) -> Segment:
    return Segment(path, 0, path.stat().st_size)


# ---- splits ----


@pytest.mark.parametrize("valid,test", [(0.1, 0.1), (0.2, 0.3), (0.05, 0.0)])
def test_single_file_splits_contiguously_at_line_ends(tiny_corpus: Path, valid: float, test: float) -> None:
    data = tiny_corpus.read_bytes()
    size = len(data)
    segments = segments_of(tiny_corpus, valid, test)
    assert list(segments) == ["train", "valid", "test"]
    train, valid_seg, test_seg = segments["train"], segments["valid"], segments["test"]
    assert (train.start, train.end, valid_seg.end, test_seg.end) == (0, valid_seg.start, test_seg.start, size)
    assert b"".join(data[s.start:s.end] for s in segments.values()) == data
    # each cut is the first line end at or after its share of the bytes
    for cut, share in ((train.end, 1.0 - valid - test), (valid_seg.end, 1.0 - test)):
        offset = int(size * share)
        assert cut >= offset
        assert cut == size or data[cut - 1:cut] == b"\n"
        assert b"\n" not in data[offset:cut - 1]
    assert train.size >= (1.0 - valid - test) * size
    if valid:
        assert valid_seg.size > 0
    if test:
        assert test_seg.size > 0
    else:
        assert test_seg.size == 0


def test_single_file_split_sizes_follow_the_fractions(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b"0123456789\n" * 97)  # 1067 bytes, lines of 11
    segments = segments_of(path, valid=0.2, test=0.1)
    # 70 % is byte 746, inside the line that ends at 747; 90 % is byte 960, inside the line ending at 967
    assert (segments["train"].end, segments["valid"].end) == (748, 968)
    segments = segments_of(path, valid=0.5, test=0.25)  # 25 % is byte 266, in the line ending at 274
    assert (segments["train"].end, segments["valid"].end) == (275, 803)


def test_single_file_without_newlines_is_cut_at_character_boundaries(tmp_path: Path) -> None:
    text = "é" * 500  # two bytes each, no line end anywhere (like text8)
    path = write_bytes(tmp_path, text.encode())
    segments = segments_of(path, valid=0.1, test=0.1)
    pieces = [path.read_bytes()[s.start:s.end].decode("utf-8") for s in segments.values()]
    assert "".join(pieces) == text
    assert all(piece for piece in pieces)


def test_load_corpus_splits_cover_every_character(tiny_corpus: Path) -> None:
    loaded = load_corpus(data_config(tiny_corpus), CHAR)
    text = tiny_corpus.read_text(encoding="utf-8")
    assert set(loaded.splits) == {"train", "valid", "test"}
    assert sum(len(s.ids) for s in loaded.splits.values()) == len(text)
    joined = np.concatenate([loaded.splits[name].ids for name in ("train", "valid", "test")])
    assert loaded.tokenizer.decode(joined) == text


def test_folder_corpus_reads_each_split_file(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    texts = {"train": "the cat sat\n", "valid": "the dog\n", "test": "a cat\n"}
    for name, text in texts.items():
        (folder / f"{name}.txt").write_text(text)
    segments = segments_of(folder)
    assert {name: (s.path.name, s.start, s.end) for name, s in segments.items()} == {
        name: (f"{name}.txt", 0, len(text)) for name, text in texts.items()
    }
    loaded = load_corpus(data_config(folder), WORD)
    assert loaded.tokenizer.decode(loaded.splits["valid"].ids) == "the <unk>\n"  # vocab from train only
    assert loaded.tokenizer.decode(loaded.splits["test"].ids) == "<unk> cat\n"


def test_folder_corpus_without_test_has_no_test_split(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.txt").write_text("abc\n")
    (folder / "valid.txt").write_text("cab\n")
    loaded = load_corpus(data_config(folder), CHAR)
    assert set(loaded.splits) == {"train", "valid"}


def test_folder_corpus_missing_valid_is_a_data_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.txt").write_text("abc\n")
    (folder / "test.txt").write_text("abc\n")
    with pytest.raises(DataError, match=r"lacks valid\.txt \("):  # train.txt is there: only valid is named
        load_corpus(data_config(folder), CHAR)


def test_folder_corpus_missing_train_and_valid_names_both(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    with pytest.raises(DataError, match=r"lacks train\.txt and valid\.txt"):
        segments_of(folder)


# ---- reading and validating text ----


def test_iter_text_pieces_end_at_line_ends(tmp_path: Path) -> None:
    text = "short\n" + "a much longer line than the block size\n" + "x\n\n" + "tail without newline"
    path = write_bytes(tmp_path, text.encode())
    for block_size in (1, 2, 3, 7, 16, 1 << 20):
        pieces = list(iter_text(whole(path), block_size=block_size))
        assert "".join(pieces) == text
        assert all(piece.endswith("\n") for piece in pieces[:-1])
        assert all(piece for piece in pieces)
        assert pieces[-1].endswith("tail without newline")


def test_iter_text_reads_only_its_segment(tmp_path: Path) -> None:
    text = "zero\none\ntwo\nthree\n"
    path = write_bytes(tmp_path, text.encode())
    start, end = text.index("one"), text.index("three")
    for block_size in (1, 4, 100):
        assert "".join(iter_text(Segment(path, start, end), block_size=block_size)) == "one\ntwo\n"
    assert list(iter_text(Segment(path, 3, 3))) == []


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5, 7, 64])
def test_iter_text_multibyte_characters_split_across_blocks_decode_fine(tmp_path: Path, block_size: int) -> None:
    text = "aé€😀\n漢字 z\r\n" * 5 + "😀"
    path = write_bytes(tmp_path, text.encode("utf-8"))
    assert "".join(iter_text(whole(path), block_size=block_size)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=60), st.integers(1, 9))
def test_iter_text_property(tmp_path: Path, text: str, block_size: int) -> None:
    path = write_bytes(tmp_path, text.encode("utf-8"))
    pieces = list(iter_text(whole(path), block_size=block_size))
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-1])
    assert all(pieces)


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5, 8, 1 << 20])
@pytest.mark.parametrize("offset", [0, 7, 8, 9, 15, 16])
def test_invalid_utf8_reports_its_byte_offset(tmp_path: Path, block_size: int, offset: int) -> None:
    data = bytearray("abcdefghijklmnopq\nrs\n".encode())
    data[offset] = 0xFF  # never valid in UTF-8; offsets 8 and 16 start a block of 8 or 4, 7 and 15 end one
    path = write_bytes(tmp_path, bytes(data))
    with pytest.raises(DataError, match=rf"not UTF-8 text: invalid byte 0xff at byte offset {offset}\b"):
        list(iter_text(whole(path), block_size=block_size))


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 6, 1 << 20])
def test_invalid_utf8_after_multibyte_characters_reports_its_byte_offset(tmp_path: Path, block_size: int) -> None:
    prefix = "é€😀\n".encode()  # 2 + 3 + 4 + 1 bytes
    path = write_bytes(tmp_path, prefix + b"\x80 tail\n")  # a continuation byte with no lead byte
    with pytest.raises(DataError, match=rf"invalid byte 0x80 at byte offset {len(prefix)}\b"):
        list(iter_text(whole(path), block_size=block_size))


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5, 1 << 20])
def test_truncated_multibyte_sequence_is_reported_at_its_start(tmp_path: Path, block_size: int) -> None:
    # "€" is e2 82 ac; cut after two bytes and followed by ASCII, or at the very end of the file
    for data, offset in ((b"ab\xe2\x82cd\n", 2), (b"abcd\n\xe2\x82", 5)):
        path = write_bytes(tmp_path, data)
        with pytest.raises(DataError, match=rf"invalid byte 0xe2 at byte offset {offset}\b"):
            list(iter_text(whole(path), block_size=block_size))


class _CountingFile:
    """Wraps a binary file and fails a test that reads it forever instead of hanging it."""

    def __init__(self, file, limit: int = 1000) -> None:
        self.file, self.reads, self.limit = file, 0, limit

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > self.limit:
            raise AssertionError(f"read {self.limit} times without getting anywhere: an endless loop")
        return self.file.read(size)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def test_file_shorter_than_its_segment_is_an_error_not_a_hang(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # the corpus was cut into segments, then rewritten shorter before it was encoded
    path = write_bytes(tmp_path, b"abc\ndef\n")
    segment = Segment(path, 0, 8)
    path.write_bytes(b"abc\n")
    monkeypatch.setattr(corpus, "open", lambda *a, **k: _CountingFile(open(*a, **k)), raising=False)
    with pytest.raises(DataError, match=str(path)):
        list(iter_text(segment, block_size=4))


def test_invalid_utf8_offset_counts_from_the_file_start_in_a_later_segment(tmp_path: Path) -> None:
    data = b"line one\nline two\nbad \xff here\n"
    path = write_bytes(tmp_path, data)
    offset = data.index(b"\xff")
    with pytest.raises(DataError, match=rf"byte offset {offset}\b"):
        list(iter_text(Segment(path, 9, len(data)), block_size=4))


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 1 << 20])
def test_nul_byte_is_a_data_error_mentioning_binary_and_the_offset(tmp_path: Path, block_size: int) -> None:
    data = "é€\nab\0cd\n".encode()
    offset = data.index(b"\0")
    path = write_bytes(tmp_path, data)
    with pytest.raises(DataError, match=rf"NUL byte at byte offset {offset}\b.*binary"):
        list(iter_text(whole(path), block_size=block_size))


def test_load_corpus_rejects_a_binary_file(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" * 10)
    with pytest.raises(DataError, match="binary|UTF-8"):
        load_corpus(data_config(path), CHAR)


# ---- encoding and the ids cache ----


def test_second_load_reuses_the_cache(tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_corpus(data_config(tiny_corpus), CHAR)
    files = cache_ids_files()
    assert len(files) == 3  # one per split
    stamps = {f: f.stat().st_mtime_ns for f in files}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr(corpus, "_encode_to_file", refuse)
    second = load_corpus(data_config(tiny_corpus), CHAR)
    for name in ("train", "valid", "test"):
        assert np.array_equal(second.splits[name].ids, first.splits[name].ids)
        assert isinstance(second.splits[name].ids, np.memmap)
        assert (second.splits[name].chars, second.splits[name].bytes) == (first.splits[name].chars,
                                                                           first.splits[name].bytes)
    assert {f: f.stat().st_mtime_ns for f in cache_ids_files()} == stamps


def test_cache_is_rebuilt_when_the_corpus_changes(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b"abc\n" * 10)
    tokenizer = CharTokenizer("abcxyz\n")
    before = encode_text_file(path, tokenizer, registry.default_cache_dir())
    assert tokenizer.decode(before.ids) == "abc\n" * 10

    path.write_bytes(b"xyz\n" * 11)  # another size
    changed = encode_text_file(path, tokenizer, registry.default_cache_dir())
    assert tokenizer.decode(changed.ids) == "xyz\n" * 11

    stat = path.stat()
    path.write_bytes(b"zyx\n" * 11)  # the same size, edited later
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    edited = encode_text_file(path, tokenizer, registry.default_cache_dir())
    assert tokenizer.decode(edited.ids) == "zyx\n" * 11


def test_cache_is_rebuilt_when_the_tokenizer_changes(tiny_corpus: Path) -> None:
    first = load_corpus(data_config(tiny_corpus), CHAR)
    count = len(cache_ids_files())
    other = CharTokenizer(sorted(first.tokenizer.chars)[1:])  # drop the newline: another vocabulary
    second = load_corpus(data_config(tiny_corpus), CHAR, tokenizer=other)
    assert len(cache_ids_files()) == 2 * count
    text = tiny_corpus.read_text()
    joined = np.concatenate([second.splits[name].ids for name in ("train", "valid", "test")])
    assert joined.tolist() == other.encode(text).tolist()
    assert not np.array_equal(second.splits["train"].ids, first.splits["train"].ids)


@pytest.mark.parametrize("cut", [2, 1, "all"])
def test_truncated_cache_ids_file_is_detected_and_rebuilt(tiny_corpus: Path, cut: object) -> None:
    first = load_corpus(data_config(tiny_corpus), CHAR)
    expected = {name: np.array(split.ids) for name, split in first.splits.items()}
    del first
    for ids_path in cache_ids_files():
        size = ids_path.stat().st_size
        with open(ids_path, "r+b") as f:
            f.truncate(0 if cut == "all" else size - cut)  # one uint16 short, or half of one, or empty
    second = load_corpus(data_config(tiny_corpus), CHAR)
    for name, ids in expected.items():
        assert np.array_equal(second.splits[name].ids, ids)
    sizes = sorted(p.stat().st_size for p in cache_ids_files())
    assert sizes == sorted(len(ids) * 2 for ids in expected.values())


def test_missing_or_damaged_cache_metadata_is_rebuilt(tiny_corpus: Path) -> None:
    first = load_corpus(data_config(tiny_corpus), CHAR)
    expected = np.array(first.splits["train"].ids)
    metas = sorted((registry.default_cache_dir() / "ids").glob("*.json"))
    assert len(metas) == 3
    metas[0].write_text("{not json")
    metas[1].unlink()
    metas[2].write_text(json.dumps({"dtype": "uint16"}))
    second = load_corpus(data_config(tiny_corpus), CHAR)
    assert np.array_equal(second.splits["train"].ids, expected)
    assert sum(len(s.ids) for s in second.splits.values()) == len(tiny_corpus.read_text())


def test_word_encoding_in_small_pieces_equals_encoding_the_whole(tiny_corpus: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus, "iter_text", functools.partial(iter_text, block_size=7))
    text = tiny_corpus.read_text() + "last line without newline"
    tiny_corpus.write_text(text)
    builder = vocab_builder("word")
    builder.add(text)
    tokenizer = builder.build()
    split = encode_text_file(tiny_corpus, tokenizer, registry.default_cache_dir())
    assert split.ids.tolist() == tokenizer.encode(text).tolist()


def test_small_vocabulary_is_cached_as_uint16(tiny_corpus: Path) -> None:
    loaded = load_corpus(data_config(tiny_corpus), CHAR)
    assert all(split.ids.dtype == np.uint16 for split in loaded.splits.values())
    assert sum(p.stat().st_size for p in cache_ids_files()) == 2 * len(tiny_corpus.read_text())


@pytest.mark.parametrize("vocab_size,dtype", [(65536, np.uint16), (65537, np.uint32)])
def test_ids_dtype_follows_the_vocabulary_size(tmp_path: Path, vocab_size: int, dtype: type) -> None:
    chars = [chr(c) for c in range(0x20, 0xD800)] + [chr(c) for c in range(0xE000, 0x110000)]
    tokenizer = CharTokenizer(chars[: vocab_size - 1])  # plus <unk>
    assert tokenizer.vocab_size == vocab_size
    text = chars[vocab_size - 2] + " a\n"  # the highest id in the vocabulary
    path = write_bytes(tmp_path, text.encode())
    split = encode_text_file(path, tokenizer, registry.default_cache_dir())
    assert split.ids.dtype == dtype
    assert split.ids.tolist() == tokenizer.encode(text).tolist()
    assert int(split.ids[0]) == vocab_size - 2


def test_split_counts_characters_and_bytes_of_non_ascii_text(tmp_path: Path) -> None:
    text = "héllo 😀\n漢字かな\nplain\n"
    path = write_bytes(tmp_path, text.encode("utf-8"))
    tokenizer = CharTokenizer(text)
    split = encode_text_file(path, tokenizer, registry.default_cache_dir())
    assert split.chars == len(text) == 19
    assert split.bytes == len(text.encode("utf-8")) == 31
    cached = encode_text_file(path, tokenizer, registry.default_cache_dir())
    assert (cached.chars, cached.bytes) == (split.chars, split.bytes)


def test_split_counts_per_split_add_up(tmp_path: Path) -> None:
    text = "naïve café 😀\n" * 40
    path = write_bytes(tmp_path, text.encode("utf-8"))
    loaded = load_corpus(data_config(path), CHAR)
    assert sum(s.chars for s in loaded.splits.values()) == len(text)
    assert sum(s.bytes for s in loaded.splits.values()) == len(text.encode("utf-8"))
    for split in loaded.splits.values():
        assert split.chars == len(split.ids)
        assert split.bytes == len(loaded.tokenizer.decode(split.ids).encode("utf-8"))


def test_empty_split_encodes_to_no_ids(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b"abc\n")
    split = encode_segment(Segment(path, 2, 2), CharTokenizer("abc\n"), registry.default_cache_dir())
    assert len(split.ids) == 0 and split.chars == 0 and split.bytes == 0


def test_word_corpus_round_trip_through_the_cache(tiny_corpus: Path) -> None:
    loaded = load_corpus(data_config(tiny_corpus, valid=0.2, test=0.2), WORD)
    assert isinstance(loaded.tokenizer, WordTokenizer)
    train = loaded.splits["train"]
    segments = segments_of(tiny_corpus, 0.2, 0.2)
    train_text = "".join(iter_text(segments["train"]))
    assert train.ids.tolist() == loaded.tokenizer.encode(train_text).tolist()
    assert loaded.tokenizer.unk_id not in train.ids.tolist()
