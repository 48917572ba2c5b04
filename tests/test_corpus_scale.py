"""Corpus paths that matter at scale: training samples, the tokenizer cache, lines longer than memory
should hold, and the ids cache with subword tokenizers."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from rnnlm.config import TokenizerConfig
from rnnlm.data import corpus, registry, subword
from rnnlm.data.corpus import (
    Segment,
    build_tokenizer,
    encode_text_file,
    iter_pieces,
    iter_text,
    load_corpus,
    sample_segments,
)
from rnnlm.data.tokenizers import fingerprint, vocab_builder
from test_corpus import cache_ids_files, data_config, write_bytes

BPE = TokenizerConfig(kind="bpe", vocab_size=300)


def cached_tokenizer_files() -> list[Path]:
    return sorted((registry.default_cache_dir() / "tokenizers").glob("*.json"))


# ---- sampling the training split ----


def test_sample_windows_start_and_end_at_lines_and_add_up_to_the_sample(tmp_path: Path) -> None:
    lines = [f"line {i:04d} " + "x" * (i % 13) + "\n" for i in range(2000)]
    data = "".join(lines).encode()
    path = write_bytes(tmp_path, data)
    segment = Segment(path, 0, len(data))
    parts = sample_segments(segment, sample_bytes=3000, window=200)
    assert len(parts) == 15
    assert all(a.end <= b.start for a, b in zip(parts, parts[1:]))  # disjoint, in order
    for part in parts:
        assert part.start == 0 or data[part.start - 1:part.start] == b"\n"
        assert data[part.end - 1:part.end] == b"\n"
    total = sum(p.size for p in parts)
    assert 3000 <= total <= 3000 + 15 * 25  # each window ends at the first line end after 200 bytes
    assert parts[-1].end > 0.9 * len(data)  # spread over the whole split, not its head
    assert sample_segments(segment, sample_bytes=0) == [segment]
    assert sample_segments(segment, sample_bytes=len(data)) == [segment]


def test_sample_of_a_file_without_newlines_stays_inside_the_segment(tmp_path: Path) -> None:
    data = ("ab é " * 3000).encode()  # 18,000 bytes, one line (like text8)
    path = write_bytes(tmp_path, data)
    segment = Segment(path, 100, 17_000)
    parts = sample_segments(segment, sample_bytes=2000, window=500)
    assert parts and all(segment.start <= p.start < p.end <= segment.end for p in parts)
    for part in parts:
        data[part.start:part.end].decode("utf-8")  # cut at character boundaries
    assert sum(p.size for p in parts) == pytest.approx(2000, abs=8)


def test_subword_tokenizer_reads_only_its_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "".join(f"word{i % 97} and word{i % 89}\n" for i in range(60_000))  # 1.2 MB
    path = write_bytes(tmp_path, text.encode())
    read: list[int] = []
    real_iter_text = corpus.iter_text
    monkeypatch.setattr(corpus, "iter_text", lambda seg, *a, **k: (read.append(seg.size), real_iter_text(seg))[1])
    sample = 2 * corpus.SAMPLE_WINDOW
    tokenizer = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=320, sample_bytes=sample),
                                Segment(path, 0, len(text)))
    assert tokenizer.vocab_size == 320
    assert len(read) == 2 and sample <= sum(read) < sample + 2 * 20 < len(text)


# ---- very long lines ----


def test_iter_text_cuts_a_very_long_line_before_a_space(tmp_path: Path) -> None:
    text = "alpha beta gamma delta " * 20 + "\nshort\n" + "nospaceatall" * 5
    path = write_bytes(tmp_path, text.encode())
    pieces = list(iter_text(Segment(path, 0, len(text)), block_size=16, max_line=40))
    assert "".join(pieces) == text
    assert max(len(p) for p in pieces) <= 40 + 16 + 16  # bounded, however long the line
    for piece, following in zip(pieces, pieces[1:]):
        # a long line is cut before a space, or anywhere when it has none
        assert piece.endswith("\n") or following.startswith(" ") or " " not in piece
    goes_on = [flag for _, flag in iter_pieces(Segment(path, 0, len(text)))]
    assert goes_on == [False]  # the default limit is far above this text: one piece


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_encoding_a_long_line_in_pieces_equals_encoding_it_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  kind: str) -> None:
    text = "the cat sat on the mat " * 200 + "\nthe end\n" + "and a last line without newline"
    path = write_bytes(tmp_path, text.encode())
    builder = vocab_builder(kind, 0)
    builder.add(text)
    tokenizer = builder.build()
    monkeypatch.setattr(corpus, "iter_text", functools.partial(iter_text, block_size=50, max_line=100))
    pieces = list(iter_pieces(Segment(path, 0, len(text))))
    assert len(pieces) > 40 and sum(goes_on for _, goes_on in pieces) > 40
    split = encode_text_file(path, tokenizer, registry.default_cache_dir())
    assert split.ids.tolist() == tokenizer.encode(text).tolist()


def test_word_counts_of_a_line_read_in_pieces_are_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "a b c " * 100 + "\nd\n"
    path = write_bytes(tmp_path, text.encode())
    monkeypatch.setattr(corpus, "iter_text", functools.partial(iter_text, block_size=8, max_line=10))
    tokenizer = build_tokenizer(TokenizerConfig(kind="word"), Segment(path, 0, len(text)))
    whole = vocab_builder("word")
    whole.add(text)
    assert tokenizer.words == whole.build().words  # <eos> counted twice, not once per piece


# ---- the tokenizer cache ----


def test_tokenizer_is_cached_per_split_and_settings(tiny_corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_corpus(data_config(tiny_corpus), BPE)
    assert len(cached_tokenizer_files()) == 1

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of reading the cache")

    with monkeypatch.context() as patch:  # not monkeypatch.undo(): that would also undo the isolated cache
        patch.setattr(subword, "train", refuse)
        again = load_corpus(data_config(tiny_corpus), BPE)
    assert fingerprint(again.tokenizer) == fingerprint(first.tokenizer)
    assert again.tokenizer.kind == "bpe"
    other = load_corpus(data_config(tiny_corpus), TokenizerConfig(kind="bpe", vocab_size=301))
    assert other.tokenizer.vocab_size == 301 and len(cached_tokenizer_files()) == 2


def test_settings_a_kind_ignores_share_its_cache_entry(tiny_corpus: Path) -> None:
    load_corpus(data_config(tiny_corpus), TokenizerConfig(kind="char"))
    load_corpus(data_config(tiny_corpus), TokenizerConfig(kind="char", vocab_size=7, sample_bytes=5))
    assert len(cached_tokenizer_files()) == 1
    load_corpus(data_config(tiny_corpus), TokenizerConfig(kind="word", sample_bytes=5))
    load_corpus(data_config(tiny_corpus), TokenizerConfig(kind="word", min_count=2))
    assert len(cached_tokenizer_files()) == 3


def test_damaged_tokenizer_cache_is_rebuilt(tiny_corpus: Path) -> None:
    first = load_corpus(data_config(tiny_corpus), BPE)
    (path,) = cached_tokenizer_files()
    for damage in ('{"kind": "bpe", "model": {"__bytes__": "bm90IGEgbW9kZWw="}}', "{trunc", ""):
        path.write_text(damage)
        again = load_corpus(data_config(tiny_corpus), BPE)
        assert fingerprint(again.tokenizer) == fingerprint(first.tokenizer)


def test_tokenizer_cache_follows_the_training_text(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, ("the cat sat\n" * 200).encode())
    before = load_corpus(data_config(path), TokenizerConfig(kind="word"))
    path.write_bytes(("a dog ran\n" * 201).encode())
    after = load_corpus(data_config(path), TokenizerConfig(kind="word"))
    assert "dog" in after.tokenizer.words and "dog" not in before.tokenizer.words


# ---- the ids cache with subword tokenizers ----


def test_ids_cache_is_rebuilt_when_the_bpe_tokenizer_changes(tiny_corpus: Path) -> None:
    first = load_corpus(data_config(tiny_corpus), BPE)
    assert len(cache_ids_files()) == 3
    second = load_corpus(data_config(tiny_corpus), TokenizerConfig(kind="bpe", vocab_size=320))
    assert len(cache_ids_files()) == 6  # another model, other ids: never the first model's cache
    third = load_corpus(data_config(tiny_corpus), TokenizerConfig(kind="unigram", vocab_size=300))
    assert len(cache_ids_files()) == 9
    text = tiny_corpus.read_text()
    for loaded in (first, second, third):
        joined = np.concatenate([loaded.splits[name].ids for name in ("train", "valid", "test")])
        assert loaded.tokenizer.decode(joined) == text
    assert len(first.splits["train"].ids) != len(second.splits["train"].ids)


def test_bpe_splits_count_bytes_of_the_raw_text(tmp_path: Path) -> None:
    text = "naïve café 😀 漢字\n" * 60
    path = write_bytes(tmp_path, text.encode())
    loaded = load_corpus(data_config(path), TokenizerConfig(kind="bpe"))
    assert sum(s.bytes for s in loaded.splits.values()) == len(text.encode())
    assert sum(s.chars for s in loaded.splits.values()) == len(text)
    for split in loaded.splits.values():
        assert split.bytes == len(loaded.tokenizer.decode(split.ids).encode())
