"""sentencepiece tokenizers: lossless round trips, newlines, long lines, vocabulary-size errors, state."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import TINY_TEXT
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.data import subword
from rnnlm.data.subword import SentencePieceTokenizer
from rnnlm.data.tokenizers import fingerprint, from_state, vocab_builder
from rnnlm.errors import CheckpointError, DataError
from test_tokenizers import AWKWARD_TEXT, char_tokenizer

TRAIN_TEXT = TINY_TEXT + AWKWARD_TEXT + "\n"
KINDS = ("bpe", "unigram")
# text the models never saw, mixed with what they did: whitespace runs, the space mark sentencepiece
# uses itself, emoji, CJK, combining marks, control characters
AWKWARD_CHARS = st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "\u2581", "😀", "漢", "e\u0301", "\x00", "\u3000",
                                 "First", " Citizen", "speak", ":", "\ufffd", "<unk>", "\u200d"])


def train(kind: str, text: str = TRAIN_TEXT, vocab_size: int = 0, **settings: float) -> SentencePieceTokenizer:
    builder = vocab_builder(kind, vocab_size, **settings)
    builder.add(text)
    return builder.build()


@pytest.fixture(scope="module", params=KINDS)
def tokenizer(request: pytest.FixtureRequest) -> SentencePieceTokenizer:
    return train(request.param, vocab_size=330)


# ---- lossless ----


def test_round_trip_on_awkward_text(tokenizer: SentencePieceTokenizer) -> None:
    assert tokenizer.vocab_size == 330
    for text in (AWKWARD_TEXT, TRAIN_TEXT, "  two leading, two trailing  \n\n\n", "\t\t", ""):
        ids = tokenizer.encode(text)
        assert ids.dtype == np.int64
        assert tokenizer.decode(ids) == text
    ids = tokenizer.encode(TINY_TEXT)
    assert len(ids) < 0.8 * len(TINY_TEXT)  # real subwords: pieces of several characters
    assert max(len(tokenizer.decode([i])) for i in ids.tolist()) >= 5
    assert tokenizer.unk_id not in ids.tolist()
    assert "".join(tokenizer.piece(i) for i in tokenizer.encode("First Citizen")) == "First\u2581Citizen"


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_round_trip_property_on_any_text(tokenizer: SentencePieceTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    piece = tokenizer.stream_decoder()
    assert "".join(piece(int(i)) for i in ids) == text


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(AWKWARD_CHARS | st.characters(exclude_categories=("Cs",)), max_size=40))
def test_round_trip_property_on_awkward_mixtures(tokenizer: SentencePieceTokenizer, parts: list[str]) -> None:
    text = "".join(parts)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(first=st.text(), second=st.text())
def test_text_cut_at_a_line_end_encodes_the_same_in_pieces(tokenizer: SentencePieceTokenizer, first: str,
                                                           second: str) -> None:
    # the corpus cache encodes a file piece by piece, cut at line ends
    whole = tokenizer.encode(first + "\n" + second).tolist()
    assert whole == tokenizer.encode(first + "\n").tolist() + tokenizer.encode(second).tolist()


def test_newline_is_one_token_and_the_boundary(tokenizer: SentencePieceTokenizer) -> None:
    newline = tokenizer.boundary_id
    assert tokenizer.piece(newline) == "\n"
    assert tokenizer.encode("\n\n").tolist() == [newline, newline]
    ids = tokenizer.encode("All:\nSpeak").tolist()
    assert ids.count(newline) == 1 and tokenizer.decode(ids[: ids.index(newline) + 1]) == "All:\n"
    # a prompt is not closed: no newline is added at its end
    assert tokenizer.encode("All:", partial=True).tolist() == tokenizer.encode("All:").tolist()
    assert newline not in tokenizer.encode("All:", partial=True).tolist()


def test_unseen_characters_fall_back_to_their_bytes(tokenizer: SentencePieceTokenizer) -> None:
    ids = tokenizer.encode("🦀").tolist()
    assert [tokenizer.piece(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"]
    assert set(ids) <= set(tokenizer.fallback_ids)
    assert tokenizer.unknown("🦀 and 漢字") == []
    # a literal space mark is text, not a space: it travels as its three bytes
    assert [tokenizer.piece(i) for i in tokenizer.encode("\u2581")] == ["<0xE2>", "<0x96>", "<0x81>"]


def test_stream_decoder_prints_a_character_once_its_bytes_are_complete(tokenizer: SentencePieceTokenizer) -> None:
    ids = tokenizer.encode("a🦀b").tolist()
    piece = tokenizer.stream_decoder()
    assert [piece(i) for i in ids] == ["a", "", "", "", "🦀", "b"]
    first, second = tokenizer.stream_decoder(), tokenizer.stream_decoder()
    assert first(ids[1]) == "" and second(ids[0]) == "a"  # independent decoders


def test_lone_surrogate_is_unk_and_named(tokenizer: SentencePieceTokenizer) -> None:
    # a prompt from a non-UTF-8 command line carries surrogate escapes (PEP 383): never raise on it
    ids = tokenizer.encode("a\udcffb").tolist()
    assert ids[1] == tokenizer.unk_id and len(ids) == 3
    assert tokenizer.unknown("a\udcffb") == ["\udcff"]
    assert tokenizer.decode(ids) == "a\ufffdb"


def test_long_line_encodes_in_chunks_exactly_as_in_one_piece(tokenizer: SentencePieceTokenizer) -> None:
    line = "Before we proceed any further, hear  me speak. " * 400  # 18,800 characters, no newline
    assert len(line) > 4 * subword.CHUNK_CHARS
    ids = tokenizer.encode(line)
    plain = spm.SentencePieceProcessor(model_proto=tokenizer.model)
    assert ids.tolist() == plain.encode(line, out_type=int)  # no piece spans a space, so cuts change nothing
    assert tokenizer.decode(ids) == line


def test_chunks_cut_before_a_space_and_lose_nothing() -> None:
    assert list(subword.chunks("aa bb cc", 5)) == ["aa bb", " cc"]
    assert list(subword.chunks("aa bb cc", 4)) == ["aa", " bb", " cc"]
    assert list(subword.chunks("abcdefgh", 3)) == ["abc", "def", "gh"]  # no space: cut anyway
    assert list(subword.chunks("", 3)) == []
    text = "x " * 50 + "y" * 20
    assert all(len(c) <= 7 for c in subword.chunks(text, 7))
    assert "".join(subword.chunks(text, 7)) == text


# ---- training ----


def test_lines_longer_than_sentencepieces_limit_are_still_learned() -> None:
    # sentencepiece silently skips training lines over 4192 bytes; on this text alone it would have
    # nothing to learn from
    line = "gallimaufry quodlibet farrago " * 1000
    tokenizer = train("bpe", line + "\n")
    assert [tokenizer.piece(i) for i in tokenizer.encode(" gallimaufry quodlibet farrago")] == [
        "\u2581gallimaufry", "\u2581quodlibet", "\u2581farrago"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_literal_unk_in_the_corpus_is_learned_as_text(kind: str) -> None:
    # PTB and WikiText spell rare words <unk>; sentencepiece would delete its own "<unk>" from training
    tokenizer = train(kind, "the <unk> sat on the <unk> mat\n" * 50)
    ids = tokenizer.encode(" <unk>").tolist()
    assert not set(ids) & set(tokenizer.fallback_ids)  # "<" and ">" are in the vocabulary, not bytes
    assert tokenizer.decode(ids) == " <unk>"
    assert tokenizer.piece(tokenizer.unk_id) == "<unk>"


@pytest.mark.parametrize("kind", KINDS)
def test_too_large_vocabulary_names_the_largest_that_works(kind: str) -> None:
    text = TINY_TEXT[:2000]
    with pytest.raises(DataError) as caught:
        train(kind, text, vocab_size=50_000)
    message = str(caught.value)
    assert message.startswith(f"tokenizer.vocab_size 50,000 is more than the training text supports for a {kind} ")
    assert "INTERNAL" not in message and "trainer_interface" not in message
    largest = int(message.split("set tokenizer.vocab_size=")[1].split()[0])
    assert train(kind, text, vocab_size=largest).vocab_size == largest  # the number given does work
    assert train(kind, text).vocab_size == largest  # vocab_size 0: the default, clamped to what works


@pytest.mark.parametrize("kind", KINDS)
def test_too_small_vocabulary_names_the_smallest(kind: str) -> None:
    with pytest.raises(DataError, match=r"tokenizer\.vocab_size 100 is too small for a .* needs at least (\d+) "
                                        r"\(256 byte tokens") as caught:
        train(kind, TINY_TEXT, vocab_size=100)
    smallest = int(str(caught.value).split("needs at least ")[1].split()[0])
    distinct = len(set(TINY_TEXT) - {"\n"})
    assert smallest == 256 + 2 + distinct  # bytes, <unk>, the newline, and each character of this text
    assert train(kind, TINY_TEXT, vocab_size=smallest).vocab_size == smallest


def test_no_training_text_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no text to train a bpe tokenizer"):
        train("bpe", "\n\n\n")


def test_training_writes_nothing_to_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    train("unigram", TINY_TEXT, vocab_size=300)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_training_is_deterministic() -> None:
    for kind in KINDS:
        assert train(kind, TINY_TEXT, vocab_size=300).model == train(kind, TINY_TEXT, vocab_size=300).model


# ---- state ----


def test_state_round_trips_through_a_real_checkpoint(tokenizer: SentencePieceTokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.pt"
    save_checkpoint({"tokenizer": tokenizer.state_dict()}, path)
    state = load_checkpoint(path)["tokenizer"]  # torch.load(weights_only=True): bytes are allowed
    assert state["kind"] == tokenizer.kind and isinstance(state["model"], bytes)
    rebuilt = from_state(state)
    assert type(rebuilt) is SentencePieceTokenizer
    probe = AWKWARD_TEXT + " unseen ✓ words 🦀\n"
    assert rebuilt.encode(probe).tolist() == tokenizer.encode(probe).tolist()
    assert (rebuilt.vocab_size, rebuilt.unk_id, rebuilt.boundary_id) == (330, tokenizer.unk_id, tokenizer.boundary_id)
    assert fingerprint(rebuilt) == fingerprint(tokenizer)


def test_fingerprint_follows_the_model() -> None:
    bpe, unigram = train("bpe", TINY_TEXT, vocab_size=300), train("unigram", TINY_TEXT, vocab_size=300)
    prints = {fingerprint(bpe), fingerprint(unigram), fingerprint(train("bpe", TINY_TEXT, vocab_size=301)),
              fingerprint(char_tokenizer(TINY_TEXT))}
    assert len(prints) == 4
    assert fingerprint(bpe) == fingerprint(train("bpe", TINY_TEXT, vocab_size=300))


def plain_sentencepiece_model() -> bytes:
    """A model with sentencepiece's lossy defaults: no byte fallback, no newline piece."""
    import io

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TINY_TEXT.split("\n")), model_writer=out, vocab_size=40,
                                   minloglevel=2)
    return out.getvalue()


@pytest.mark.parametrize("state", [
    {"kind": "bpe"},
    {"kind": "bpe", "model": b"not a model"},
    {"kind": "unigram", "model": "text, not bytes"},
    {"kind": "unigram", "model": None},
])
def test_damaged_state_is_a_checkpoint_error(state: dict) -> None:
    with pytest.raises(CheckpointError, match="tokenizer"):
        from_state(state)


def test_a_lossy_sentencepiece_model_is_refused() -> None:
    with pytest.raises(CheckpointError, match="newline piece or byte fallback"):
        from_state({"kind": "unigram", "model": plain_sentencepiece_model()})
