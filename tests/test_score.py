"""`rnnlm score` and rnnlm/surprisal.py: per-token and per-word scores that add up to what `eval` reports."""

import json
import math

import pytest
import torch
from helpers import TINY_MODEL, invoke

from rnnlm.config import load_config
from rnnlm.data.tokenizers import CharTokenizer
from rnnlm.models.lm import RNNLM
from rnnlm.surprisal import TokenScore, group_words, token_scores

TINY = [*TINY_MODEL, "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=6",
        "train.tensorboard=false", "data.valid_fraction=0.1", "data.test_fraction=0.1"]
KINDS = {"char": [], "word": ["tokenizer.kind=word"], "bpe": ["tokenizer.kind=bpe", "tokenizer.vocab_size=300"],
         "unigram": ["tokenizer.kind=unigram", "tokenizer.vocab_size=300"],
         "bidirectional": ["model.bidirectional=true"]}
CAFE = {"char": "caf\ufffd", "bidirectional": "caf\ufffd", "word": "<unk>"}  # é: out of the vocabulary
TEXT = "All:\nSpeak, speak.  café\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n" * 14


def trained(corpus, tmp_path, kind):
    result = invoke("train", "--run-dir", tmp_path / "run", f"data.corpus={corpus}", *TINY, *KINDS[kind])
    assert result.exit_code == 0, result.output
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return tmp_path / "run" / "best.pt", text


def jsonl(*args):
    result = invoke("score", *args, "--format", "jsonl")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_surprisals_add_up_to_what_eval_reports(tiny_corpus, tmp_path, kind):
    checkpoint, text = trained(tiny_corpus, tmp_path, kind)
    numbers = json.loads(invoke("eval", checkpoint, "--text", text, "--json").output)
    tokens, words = jsonl(checkpoint, "--text", text), jsonl(checkpoint, "--text", text, "--words")
    assert len(tokens) == numbers["tokens"] > 256  # past the warm start's span
    for rows in (tokens, words):
        assert -sum(r["log_prob"] for r in rows) == pytest.approx(numbers["loss"] * numbers["tokens"], rel=1e-6)
        assert sum(r["surprisal_bits"] for r in rows) == pytest.approx(numbers["bits_per_token"] * numbers["tokens"],
                                                                      rel=1e-6)
        assert sum(r["tokens"] for r in rows) == numbers["tokens"]
        assert all(0 < r["entropy_bits"] <= math.log2(300 if kind in ("bpe", "unigram") else 100) for r in rows)
    spelled = [r["word"] for r in words]
    assert spelled[:8] == ["All:", "\n", "Speak,", "speak.", CAFE.get(kind, "café"), "\n", "\n",
                           "First"]
    assert [r["line"] for r in words[:8]] == [1, 1, 2, 2, 2, 2, 3, 4]
    assert words[-1]["word"] == "\n" and words[-1]["line"] == TEXT.count("\n")


def test_a_zeroed_decoder_gives_log_v_everywhere(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("ab ba\nc\n", encoding="utf-8")
    tokenizer = CharTokenizer("abc \n")
    torch.manual_seed(0)
    model = RNNLM(tokenizer.vocab_size, load_config(None, ["model.hidden_size=8", "model.embed_size=8"]).model)
    torch.nn.init.zeros_(model.decoder.weight)
    torch.nn.init.zeros_(model.decoder.bias)
    rows = list(token_scores(model, tokenizer, text))
    assert [r.text for r in rows] == list("ab ba\nc\n")
    assert [r.line for r in rows] == [1, 1, 1, 1, 1, 1, 2, 2]
    for row in rows:
        assert row.surprisal == pytest.approx(math.log2(6)) and row.entropy == pytest.approx(math.log2(6))
    words = list(token_scores(model, tokenizer, text, words=True))
    assert [(w.text, w.tokens, w.line) for w in words] == [("ab", 2, 1), ("ba", 3, 1), ("\n", 1, 1), ("c", 1, 2),
                                                           ("\n", 1, 2)]


def test_reading_in_small_blocks_scores_the_same(tiny_corpus, tmp_path):
    checkpoint, text = trained(tiny_corpus, tmp_path, "word")
    from rnnlm.checkpoint import load_model

    loaded = load_model(checkpoint)
    whole = list(token_scores(loaded.model, loaded.tokenizer, text, words=True))
    blocks = list(token_scores(loaded.model, loaded.tokenizer, text, words=True, block_size=16))
    assert whole == blocks and len(whole) > 100


def score_row(log_prob, entropy=1.0, line=1):
    return TokenScore("", log_prob, entropy, line)


def test_pieces_sum_to_words_spaces_go_to_the_next_word():
    pieces = ["The", " c", "at", " ", " ", "s", "", "\u00e9", "t", "\n", "  ", "end"]  # "" : half of é's bytes
    rows = list(group_words((text, score_row(-(i + 1.0), entropy=i, line=1 + (i > 9)))
                            for i, text in enumerate(pieces)))
    assert [(r.text, r.tokens, r.log_prob, r.entropy, r.line) for r in rows] == [
        ("The", 1, -1.0, 0, 1), ("cat", 2, -5.0, 1, 1), ("sét", 6, -4 - 5 - 6 - 7 - 8 - 9.0, 3, 1),
        ("\n", 1, -10.0, 9, 1), ("end", 2, -23.0, 10, 2)]


def test_tsv_has_a_header_and_escapes_tabs_and_line_ends(tiny_corpus, tmp_path):
    checkpoint, text = trained(tiny_corpus, tmp_path, "char")
    result = invoke("score", checkpoint, "--text", text, "--words")
    lines = result.output.splitlines()
    assert lines[0] == "line\tword\tlog_prob\tsurprisal_bits\tentropy_bits\ttokens"
    assert lines[1].split("\t")[:2] == ["1", "All:"] and lines[2].split("\t")[:2] == ["1", "\\n"]
    assert all(len(line.split("\t")) == 6 for line in lines)


def test_out_writes_a_file_and_a_failure_keeps_the_old_one(tiny_corpus, tmp_path):
    checkpoint, text = trained(tiny_corpus, tmp_path, "char")
    out = tmp_path / "scores.tsv"
    assert invoke("score", checkpoint, "--text", text, "--out", out).exit_code == 0
    written = out.read_text(encoding="utf-8")
    assert written.startswith("line\ttoken\t") and len(written.splitlines()) == len(TEXT) + 1
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n" * 10 + b"\xff\n")
    result = invoke("score", checkpoint, "--text", bad, "--out", out)
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"Error: {bad} is not UTF-8 text: invalid byte 0xff at byte offset 50"]
    assert out.read_text(encoding="utf-8") == written
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_bad_input_is_one_line(tiny_corpus, tmp_path):
    checkpoint, _ = trained(tiny_corpus, tmp_path, "char")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ab\0cd")
    for path, code, fragment in [(empty, 1, "holds no text to score"), (binary, 1, "NUL byte"),
                                 (tmp_path / "missing.txt", 2, "does not exist")]:
        result = invoke("score", checkpoint, "--text", path)
        assert result.exit_code == code and fragment in result.output, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and fragment in errors[0]
        assert result.output.startswith("Error:") or code == 2  # click's usage errors come after a usage line
