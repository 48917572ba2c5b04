"""Tokenizers: exact character round trips, the PTB/WikiText word convention, state and fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlm.data.tokenizers import (
    EOS,
    REPLACEMENT,
    UNK,
    CharTokenizer,
    WordTokenizer,
    fingerprint,
    from_state,
    vocab_builder,
)
from rnnlm.errors import CheckpointError

AWKWARD_TEXT = (
    "line one\n"
    "\ttabbed\tline\n"
    "windows line\r\n"
    "emoji 😀🚀 and a family 👨‍👩‍👧 and a flag 🇫🇷\n"
    "CJK 漢字かなカナ한국어\n"
    "accents: café naïve, combining e\u0301\n"
    "\n"
    "no newline at the end"
)


def char_tokenizer(text: str) -> CharTokenizer:
    builder = vocab_builder("char")
    builder.add(text)
    return builder.build()


def word_tokenizer(*texts: str, vocab_size: int = 0, min_count: int = 1) -> WordTokenizer:
    builder = vocab_builder("word", vocab_size, min_count)
    for text in texts:
        builder.add(text)
    return builder.build()


# ---- characters ----


def test_char_round_trip_on_awkward_text() -> None:
    tokenizer = char_tokenizer(AWKWARD_TEXT)
    ids = tokenizer.encode(AWKWARD_TEXT)
    assert ids.dtype == np.int64
    assert len(ids) == len(AWKWARD_TEXT)  # one id per code point, nothing merged or dropped
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == AWKWARD_TEXT
    assert tokenizer.decode(ids.tolist()) == AWKWARD_TEXT


def test_char_vocab_is_sorted_by_code_point_with_unk_last() -> None:
    tokenizer = char_tokenizer("cab\n")
    assert tokenizer.chars == ["\n", "a", "b", "c"]
    assert tokenizer.vocab_size == 5
    assert tokenizer.unk_id == 4
    assert tokenizer.boundary_id == 0  # the newline
    assert tokenizer.encode("abc\n").tolist() == [1, 2, 3, 0]


def test_char_boundary_without_newline_in_vocab_is_unk() -> None:
    tokenizer = char_tokenizer("ab")
    assert tokenizer.boundary_id == tokenizer.unk_id


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_round_trip_property(text: str) -> None:
    tokenizer = char_tokenizer(text)
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.text(), st.text())
def test_char_unknowns_property(train: str, other: str) -> None:
    tokenizer = char_tokenizer(train)
    ids = tokenizer.encode(other)
    known = set(train)
    assert [i == tokenizer.unk_id for i in ids.tolist()] == [c not in known for c in other]
    assert tokenizer.unknown(other) == sorted(set(other) - known)
    expected = "".join(c if c in known else REPLACEMENT for c in other)
    assert tokenizer.decode(ids) == expected


def test_char_unknown_characters_map_to_unk_and_are_named() -> None:
    tokenizer = char_tokenizer("hello world\n")
    text = "hello, wörld 😀"
    ids = tokenizer.encode(text).tolist()
    unk = tokenizer.unk_id
    assert [i for i, c in zip(ids, text) if c in ",ö😀"] == [unk, unk, unk]
    assert all(i != unk for i, c in zip(ids, text) if c not in ",ö😀")
    assert tokenizer.unknown(text) == sorted([",", "ö", "😀"])
    assert tokenizer.decode(ids) == f"hello{REPLACEMENT} w{REPLACEMENT}rld {REPLACEMENT}"


def test_char_encode_with_empty_vocabulary_is_all_unk() -> None:
    tokenizer = char_tokenizer("")
    assert tokenizer.vocab_size == 1
    assert tokenizer.encode("ab").tolist() == [0, 0]
    assert tokenizer.encode("").tolist() == []


def test_char_lone_surrogate_maps_to_unk() -> None:
    # A prompt taken from a non-UTF-8 command line arrives with surrogate escapes (PEP 383);
    # `unknown()` names the character and the CLI promises to read it as <unk>, so encode must not raise.
    tokenizer = char_tokenizer("ab")
    assert tokenizer.unknown("a\udcff") == ["\udcff"]
    assert tokenizer.encode("a\udcff").tolist() == [0, tokenizer.unk_id]


# ---- words ----


def test_word_one_eos_per_line_as_ptb_counts_them() -> None:
    tokenizer = word_tokenizer("a b\n\nc\n")
    eos = tokenizer.boundary_id
    a, b, c = (tokenizer.encode(w)[0] for w in "abc")
    assert tokenizer.words[eos] == EOS
    # an empty line still ends with <eos>; a last line without newline is closed as well
    assert tokenizer.encode("a b\n\nc\n").tolist() == [a, b, eos, eos, c, eos]
    assert tokenizer.encode("a b\n\nc").tolist() == [a, b, eos, eos, c, eos]
    assert tokenizer.encode("\n\n").tolist() == [eos, eos]
    assert tokenizer.encode("").tolist() == []
    # spaces, tabs and a CR before the newline are whitespace, not words
    assert tokenizer.encode("  a\t b \r\n").tolist() == [a, b, eos]


def test_word_builder_counts_eos_like_encode() -> None:
    builder = vocab_builder("word")
    builder.add("x y\n\nx")
    assert builder.counts[EOS] == 3
    assert builder.counts["x"] == 2


def test_word_vocab_sorted_by_frequency() -> None:
    text = "c c c b b a\nb c\n"  # c: 4, b: 3, <eos>: 2, a: 1; ties by spelling
    tokenizer = word_tokenizer(text)
    assert tokenizer.words == ["c", "b", EOS, "a", UNK]
    assert tokenizer.unk_id == 4
    assert tokenizer.vocab_size == 5


def test_word_frequency_ties_break_by_spelling() -> None:
    tokenizer = word_tokenizer("z y x\n")
    assert tokenizer.words == [EOS, "x", "y", "z", UNK]


def test_word_vocab_size_cap_keeps_most_frequent_plus_specials() -> None:
    text = "a a a a a b b b b c c c d d e\n" * 2  # a 10, b 8, c 6, d 4, <eos> 2, e 2
    tokenizer = word_tokenizer(text, vocab_size=4)
    assert tokenizer.vocab_size == 4
    assert tokenizer.words == [UNK, "a", "b", EOS]  # <unk> stands for c, d and e: 12, the most frequent
    ids = tokenizer.encode("a b c d e\n").tolist()
    unk = tokenizer.unk_id
    assert ids == [tokenizer.words.index("a"), tokenizer.words.index("b"), unk, unk, unk, tokenizer.boundary_id]
    assert tokenizer.unknown("a b c d e") == ["c", "d", "e"]


def test_word_vocab_size_cap_counts_a_literal_unk_in_the_corpus_once() -> None:
    # PTB writes rare words as <unk> already; the cap must not count it twice
    text = "<unk> a a a b\n"  # <unk>: 1 written + 1 for b = 2, below a's 3; counted twice it would tie a
    tokenizer = word_tokenizer(text, vocab_size=3)
    assert tokenizer.words == ["a", UNK, EOS]
    assert tokenizer.encode("b\n").tolist() == [tokenizer.unk_id, tokenizer.boundary_id]


def test_unk_is_ranked_by_the_words_it_replaces() -> None:
    # 3,000 distinct words seen once each, capped at 1,000: <unk> replaces 2,003 tokens and ranks first,
    # where the adaptive softmax gives it the head's full width rather than the rarest cluster's
    text = " ".join(f"w{i:04d}" for i in range(3000)) + "\n" + "the " * 50 + "\n"
    tokenizer = word_tokenizer(text, vocab_size=1000)
    assert tokenizer.words[:2] == [UNK, "the"]
    assert tokenizer.words[2] == EOS  # seen twice, then the 997 kept singletons by spelling
    assert tokenizer.words[3:] == [f"w{i:04d}" for i in range(997)]
    assert (tokenizer.encode(text) == tokenizer.unk_id).sum() == 3000 - 997


def test_word_vocab_size_cap_larger_than_vocab_changes_nothing() -> None:
    text = "a a b\n"
    assert word_tokenizer(text, vocab_size=100).words == word_tokenizer(text).words


def test_words_below_min_count_are_counted_for_unk() -> None:
    tokenizer = word_tokenizer("x y z a a\n", min_count=2)  # <unk> stands for x, y and z: 3, above a's 2
    assert tokenizer.words == [UNK, "a", EOS]


def test_word_min_count_drops_rare_words_but_keeps_specials() -> None:
    text = "a a a b b c\n"  # <eos> seen once, below min_count, but always kept
    tokenizer = word_tokenizer(text, min_count=2)
    assert tokenizer.words == ["a", "b", EOS, UNK]
    assert tokenizer.encode("c a\n").tolist() == [tokenizer.unk_id, 0, tokenizer.boundary_id]


def test_word_partial_does_not_close_the_last_line() -> None:
    tokenizer = word_tokenizer("the cat sat\n")
    full = tokenizer.encode("the cat\nthe")
    prompt = tokenizer.encode("the cat\nthe", partial=True)
    assert prompt.tolist() == full.tolist()[:-1]
    assert full.tolist()[-1] == tokenizer.boundary_id
    assert prompt.tolist()[-1] != tokenizer.boundary_id
    # a prompt that ends with a newline is a closed line
    assert tokenizer.encode("the cat\n", partial=True).tolist() == tokenizer.encode("the cat\n").tolist()
    assert tokenizer.encode("", partial=True).tolist() == []


def test_word_decode_round_trip_of_normalised_text() -> None:
    text = "the cat sat\n\non the mat\n"
    tokenizer = word_tokenizer(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # runs of spaces collapse and the last line is closed: lossy by design, but stable
    assert tokenizer.decode(tokenizer.encode("the   cat\tsat")) == "the cat sat\n"


def test_word_stream_decoder_spacing_equals_decode() -> None:
    text = "the cat sat\n\non the mat\nthe dog\n"
    tokenizer = word_tokenizer(text)
    ids = tokenizer.encode(text + "the unseen cat").tolist()
    piece = tokenizer.stream_decoder()
    streamed = [piece(i) for i in ids]
    assert "".join(streamed) == tokenizer.decode(ids)
    assert streamed[:4] == ["the", " cat", " sat", "\n"]
    assert "".join(streamed).endswith("\nthe <unk> cat\n")


def test_word_stream_decoders_are_independent() -> None:
    tokenizer = word_tokenizer("a b\n")
    first, second = tokenizer.stream_decoder(), tokenizer.stream_decoder()
    a = tokenizer.words.index("a")
    assert first(a) == "a"
    assert first(a) == " a"
    assert second(a) == "a"  # a fresh decoder starts at a line start


# ---- state, fingerprint, damaged state ----


@pytest.mark.parametrize("kind", ["char", "word"])
def test_state_dict_round_trip_gives_identical_encodings(kind: str) -> None:
    builder = vocab_builder(kind, 0, 1)
    builder.add(AWKWARD_TEXT)
    tokenizer = builder.build()
    state = tokenizer.state_dict()
    rebuilt = from_state(state)
    assert type(rebuilt) is type(tokenizer)
    assert rebuilt.kind == kind
    probe = AWKWARD_TEXT + " unseen ✓ words\n"
    assert rebuilt.encode(probe).tolist() == tokenizer.encode(probe).tolist()
    assert rebuilt.vocab_size == tokenizer.vocab_size
    assert rebuilt.unk_id == tokenizer.unk_id
    assert rebuilt.boundary_id == tokenizer.boundary_id
    assert rebuilt.state_dict() == state
    assert fingerprint(rebuilt) == fingerprint(tokenizer)


def test_state_dict_is_plain_data() -> None:
    for kind in ("char", "word"):
        builder = vocab_builder(kind)
        builder.add("a b\n")
        state = builder.build().state_dict()
        assert json.loads(json.dumps(state)) == state


def test_fingerprint_changes_when_vocabulary_changes() -> None:
    assert fingerprint(char_tokenizer("abc")) == fingerprint(char_tokenizer("cba"))
    assert fingerprint(char_tokenizer("abc")) != fingerprint(char_tokenizer("abd"))
    assert fingerprint(char_tokenizer("abc")) != fingerprint(char_tokenizer("ab"))
    # the same words in another order are another vocabulary (different ids)
    assert fingerprint(word_tokenizer("a a b\n")) != fingerprint(word_tokenizer("a b b\n"))
    assert fingerprint(word_tokenizer("a b\n")) == fingerprint(word_tokenizer("a b\n"))
    # a char and a word tokenizer over the same symbols differ
    assert fingerprint(WordTokenizer(["a", EOS, UNK])) != fingerprint(CharTokenizer("a"))


@pytest.mark.parametrize("state", [
    "garbage",
    None,
    [1, 2, 3],
    {},
    {"kind": "bpe"},
    {"kind": "char"},
    {"kind": "char", "chars": ["ab"]},
    {"kind": "char", "chars": [1, 2]},
    {"kind": "char", "chars": 5},
    {"kind": "word"},
    {"kind": "word", "words": ["a", "b"]},
    {"kind": "word", "words": None},
    {"kind": "word", "words": "<eos><unk>"},
])
def test_from_state_on_garbage_raises_checkpoint_error(state: object) -> None:
    with pytest.raises(CheckpointError, match="tokenizer"):
        from_state(state)  # type: ignore[arg-type]


@pytest.mark.parametrize("words", [
    [EOS, UNK, 5],
    [EOS, UNK, None],
    [EOS, UNK, ["nested"]],
])
def test_from_state_rejects_words_that_are_not_strings(words: list) -> None:
    # otherwise the damage shows up later as a TypeError traceback from decode(), in the middle of sampling
    with pytest.raises(CheckpointError, match="tokenizer"):
        from_state({"kind": "word", "words": words})
