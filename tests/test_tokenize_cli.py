"""`rnnlm tokenize`, and bits per byte through `rnnlm eval` for every tokenizer kind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rnnlm.checkpoint import load_checkpoint, load_tokenizer, save_checkpoint
from rnnlm.config import load_config
from rnnlm.data import corpus, registry
from rnnlm.data.analysis import show_split
from rnnlm.data.tokenizers import vocab_builder
from test_cli import invoke, train


def tokenize(*args: object) -> dict:
    result = invoke("tokenize", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def valid_text(corpus_path: Path) -> str:
    config = load_config(None, [f"data.corpus={corpus_path}", "data.valid_fraction=0.05", "data.test_fraction=0.05"])
    cache = registry.default_cache_dir()
    segments = corpus.split_segments(registry.resolve(config.data.corpus, cache), config.data)
    return "".join(corpus.iter_text(segments["valid"]))


# ---- rnnlm tokenize ----


def test_tokenize_shows_the_split_and_the_numbers(tiny_corpus: Path) -> None:
    result = invoke("tokenize", f"data.corpus={tiny_corpus}", "tokenizer.kind=char", "--show", 40)
    assert result.exit_code == 0, result.output
    assert "R│e│s│o│l│v│e│d│.│\u2581│r│e│s│o│l│v│e│d│.│↵\n" in result.output  # the valid split, a token a character
    assert "│↵\n" in result.output  # a line end, shown and kept
    assert "char tokenizer, vocabulary " in result.output and "tokens per character 1.0000" in result.output
    assert "<unk> tokens 0 (0.00% of tokens)" in result.output


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "unigram"])
def test_tokenize_counts_match_the_tokenizer(tiny_corpus: Path, kind: str) -> None:
    numbers = tokenize(f"data.corpus={tiny_corpus}", f"tokenizer.kind={kind}")
    text = valid_text(tiny_corpus)
    cache = registry.default_cache_dir()
    config = load_config(None, [f"data.corpus={tiny_corpus}", f"tokenizer.kind={kind}"])
    segments = corpus.split_segments(registry.resolve(config.data.corpus, cache), config.data)
    tokenizer = corpus.cached_tokenizer(config.tokenizer, segments["train"], cache)
    ids = tokenizer.encode(text)
    assert numbers["kind"] == kind and numbers["vocab_size"] == tokenizer.vocab_size
    assert (numbers["tokens"], numbers["chars"], numbers["bytes"]) == (len(ids), len(text), len(text.encode()))
    assert numbers["tokens_per_char"] == pytest.approx(len(ids) / len(text))
    assert numbers["vocab_used"] == len(set(ids.tolist()))
    assert numbers["fallback_tokens"] == 0  # the valid split holds only characters the train split has


def test_tokenize_counts_fallback_tokens_of_unseen_characters(tiny_corpus: Path, tmp_path: Path) -> None:
    text = tmp_path / "other.txt"
    text.write_text("Speak 😀 speak\n")
    bpe = tokenize(f"data.corpus={tiny_corpus}", "tokenizer.kind=bpe", "--text", text)
    char = tokenize(f"data.corpus={tiny_corpus}", "tokenizer.kind=char", "--text", text)
    assert bpe["fallback_tokens"] == 4  # the emoji's four UTF-8 bytes
    assert char["fallback_tokens"] == 1  # one <unk>
    assert bpe["bytes"] == char["bytes"] == len("Speak 😀 speak\n".encode()) == 17
    assert bpe["fallback_share"] == pytest.approx(4 / bpe["tokens"])


def test_tokenize_a_checkpoints_tokenizer(tiny_corpus: Path, tmp_path: Path) -> None:
    assert train(tiny_corpus, tmp_path / "run", "tokenizer.kind=bpe", "tokenizer.vocab_size=300").exit_code == 0
    from_config = tokenize(f"data.corpus={tiny_corpus}", "tokenizer.kind=bpe", "tokenizer.vocab_size=300",
                           "data.valid_fraction=0.1", "data.test_fraction=0.1")
    from_checkpoint = tokenize("--checkpoint", tmp_path / "run" / "best.pt")
    assert from_checkpoint == from_config
    refused = invoke("tokenize", "--checkpoint", tmp_path / "run" / "best.pt", "tokenizer.kind=char")
    assert refused.exit_code == 2 and "drop --config and KEY=VALUE" in refused.output


def test_tokenize_too_large_vocabulary_is_one_error_line(tiny_corpus: Path) -> None:
    result = invoke("tokenize", f"data.corpus={tiny_corpus}", "tokenizer.kind=unigram", "tokenizer.vocab_size=20000")
    assert result.exit_code == 1
    assert result.output.startswith("Error: tokenizer.vocab_size 20,000 is more than the training text supports")
    assert "the largest that works is" in result.output and len(result.output.strip().splitlines()) == 1


def test_show_split_of_words_marks_line_ends() -> None:
    builder = vocab_builder("word")
    builder.add("the cat\nsat\n")
    assert show_split(builder.build(), "the cat\nsat") == "the│cat│<eos>\nsat│"


# ---- bits per byte through rnnlm eval ----


def uniform_checkpoint(run_dir: Path) -> Path:
    """The run's checkpoint with a zeroed decoder: every token gets probability 1 / V."""
    payload = load_checkpoint(run_dir / "best.pt")
    for name in ("decoder.weight", "decoder.bias"):
        payload["model"][name] = torch.zeros_like(payload["model"][name])
    path = run_dir / "uniform.pt"
    save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "format_version")}, path)
    return path


def test_bits_per_byte_on_a_hand_checked_example(tmp_path: Path) -> None:
    # 7 characters + <unk> = V 8, so a uniform model pays exactly 3 bits per token
    corpus_path = tmp_path / "corpus.txt"
    corpus_path.write_text("abc é😀\n" * 60)
    assert train(corpus_path, tmp_path / "run").exit_code == 0
    text = tmp_path / "scored.txt"
    text.write_text("é😀a\n")  # 4 characters, 2 + 4 + 1 + 1 = 8 bytes
    result = invoke("eval", uniform_checkpoint(tmp_path / "run"), "--text", text, "--json")
    numbers = json.loads(result.output)
    assert (numbers["tokens"], numbers["chars"], numbers["bytes"]) == (4, 4, 8)
    assert numbers["loss"] == pytest.approx(3 * math.log(2))  # nats per token
    assert numbers["ppl"] == pytest.approx(8.0)
    assert numbers["bits_per_token"] == pytest.approx(3.0)
    assert numbers["bits_per_char"] == pytest.approx(3.0)  # 12 bits / 4 characters
    assert numbers["bits_per_byte"] == pytest.approx(1.5)  # 12 bits / 8 bytes
    assert numbers["lossless"] is True and numbers["unk_tokens"] == 0


def test_bits_per_byte_of_a_bpe_model_counts_raw_bytes(tiny_corpus: Path, tmp_path: Path) -> None:
    assert train(tiny_corpus, tmp_path / "run", "tokenizer.kind=bpe", "tokenizer.vocab_size=300").exit_code == 0
    text = tmp_path / "scored.txt"
    text.write_text("Speak, café 😀!\nAll:\n")
    result = invoke("eval", uniform_checkpoint(tmp_path / "run"), "--text", text, "--json")
    numbers = json.loads(result.output)
    tokenizer, _ = load_tokenizer(tmp_path / "run" / "best.pt")
    tokens = len(tokenizer.encode(text.read_text()))
    assert numbers["tokens"] == tokens and numbers["bytes"] == len(text.read_bytes()) == 24
    assert numbers["bits_per_byte"] == pytest.approx(tokens * math.log2(300) / 24)
    assert numbers["lossless"] is True


def test_eval_says_a_word_models_bits_per_byte_are_lossy(tiny_corpus: Path, tmp_path: Path) -> None:
    assert train(tiny_corpus, tmp_path / "run", "tokenizer.kind=word").exit_code == 0
    text = tmp_path / "scored.txt"
    text.write_text("Speak, speak.\nSpeak, unheard-of words.\n")
    result = invoke("eval", tmp_path / "run" / "best.pt", "--text", text)
    assert result.exit_code == 0, result.output
    assert "bits/byte (lossy*)" in result.output
    assert "* lossy: word tokens fold whitespace and <unk> stands for every rare word (2 <unk> tokens here)" \
        in result.output
    numbers = json.loads(invoke("eval", tmp_path / "run" / "best.pt", "--text", text, "--json").output)
    assert numbers["lossless"] is False and numbers["unk_tokens"] == 2


def test_eval_of_a_char_model_names_unseen_characters(tiny_corpus: Path, tmp_path: Path) -> None:
    assert train(tiny_corpus, tmp_path / "run").exit_code == 0
    text = tmp_path / "scored.txt"
    text.write_text("Speak, speak.\n")
    assert "lossy" not in invoke("eval", tmp_path / "run" / "best.pt", "--text", text).output
    text.write_text("Speak, spéak 😀.\n")
    result = invoke("eval", tmp_path / "run" / "best.pt", "--text", text)
    assert "* lossy: 2 characters of this text are not in the vocabulary" in result.output
