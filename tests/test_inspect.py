"""`rnnlm inspect`: the numbers behind the page on hand-made arrays, the recording against the model's own
forward pass, the command's JSON and page, and one clear line for each bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import invoke, tiny_config, train_run
from test_docs import documented_json_keys

from rnnlm.checkpoint import load_model
from rnnlm.inspect import Trace, memory_ranking, record, saturation, saturation_counts
from rnnlm.properties import property_ranking, text_properties


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-layer character LSTM, trained for a few steps."""
    from conftest import TINY_TEXT

    folder = tmp_path_factory.mktemp("inspect")
    corpus = folder / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RNNLM_CACHE", str(folder / "cache"))
        train_run(tiny_config(corpus, "model.num_layers=2"), folder / "run")
    return folder / "run" / "best.pt"


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "speech.txt"
    path.write_text("First Citizen:\nSpeak, speak.\n\nAll:\nResolved. resolved.\n" * 4, encoding="utf-8")
    return path


# ---- the numbers, on hand-made arrays ----


def test_saturation_counts_the_values_beyond_0_1_and_0_9() -> None:
    gate = np.array([[0.05, 0.1, 0.5], [0.95, 0.9, 0.99]], dtype=np.float32)
    assert saturation_counts(gate).tolist() == [1, 2, 6]  # 0.1 and 0.9 themselves are not saturated
    trace = Trace("lstm", [], counts=[{"f": np.array([1, 2, 6]), "i": np.array([0, 0, 4])}])
    assert saturation(trace) == [{"f": {"low": 1 / 6, "high": 2 / 6}, "i": {"low": 0.0, "high": 0.0}}]


def test_text_properties_have_their_exact_values() -> None:
    tokens = list('ab "c(d[e]"\n  (x)\n')
    found = text_properties(tokens)
    assert found["line_position"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]
    assert found["in_quotes"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert found["bracket_depth"].tolist() == [0, 0, 0, 0, 0, 1, 1, 2, 2, 1, 1, 1, 1, 1, 2, 2, 1, 1]
    assert found["in_brackets"].tolist() == [float(d > 0) for d in found["bracket_depth"].tolist()]
    assert found["indentation"].tolist() == [0] * 12 + [1, 2, 2, 2, 2, 0]


def test_a_word_tokens_property_is_the_one_after_its_last_character() -> None:
    found = text_properties(["say", ' "hi', '"', " (x", ")", "\n", "  go"])
    assert found["in_quotes"].tolist() == [0, 1, 0, 0, 0, 0, 0]
    assert found["bracket_depth"].tolist() == [0, 0, 0, 1, 0, 0, 0]
    assert found["line_position"].tolist() == [0, 3, 7, 8, 11, 12, 0]  # the column its first character is in
    assert found["indentation"].tolist() == [0, 0, 0, 0, 0, 0, 2]


def test_the_property_ranking_finds_a_planted_unit() -> None:
    generator = np.random.default_rng(0)
    tokens = list('He said "so it is" and "no" then "yes, yes" and left.\n' * 20)
    quoted = text_properties(tokens)["in_quotes"]
    layers = [{"h": generator.normal(size=(len(tokens), 12)).astype(np.float16)} for _ in range(2)]
    layers[1]["h"][:, 7] = (2 * quoted - 1 + 0.3 * generator.normal(size=len(tokens))).astype(np.float16)
    columns = [(k, "h", layer["h"]) for k, layer in enumerate(layers)]
    ranked = property_ranking(columns, {"in_quotes": quoted, "indentation": np.zeros(len(tokens))}, top=3)
    best = ranked["in_quotes"][0]
    assert (best.layer, best.quantity, best.unit) == (1, "h", 7) and best.correlation > 0.9
    assert all(abs(t.correlation) < 0.2 for t in ranked["in_quotes"][1:])  # the others are noise
    assert ranked["indentation"] == []  # constant in this text: nothing to track


def test_the_memory_ranking_puts_the_gate_that_stays_open_first() -> None:
    keep = np.full((50, 4), 0.5, dtype=np.float32)
    keep[:, 2] = 0.99
    keep[::2, 1] = 0.9  # alternating 0.9 and 0.5: a mean of 0.7, a half-life from the mean log
    trace = Trace("lstm", [{"f": keep.astype(np.float16), "h": np.zeros((50, 4), np.float16)}])
    trace.log_keep = [np.log(keep).sum(0, dtype=np.float64)]
    ranked = memory_ranking(trace)
    assert [u.unit for u in ranked] == [2, 1, 0, 3]
    assert ranked[0].half_life == pytest.approx(math.log(0.5) / math.log(0.99), rel=1e-5)  # 69 tokens (float32 0.99)
    assert ranked[1].half_life == pytest.approx(2 * math.log(0.5) / (math.log(0.9) + math.log(0.5)))
    assert ranked[0].score == pytest.approx(0.99, abs=1e-3)


def test_the_mingrus_memory_is_one_minus_its_update_gate() -> None:
    # minGRU: h_t = (1 - z) h_{t-1} + z h~_t, so a unit whose z stays near 0 keeps its state
    z = np.full((50, 3), 0.5, dtype=np.float32)
    z[:, 1] = 0.01
    trace = Trace("mingru", [{"z": z.astype(np.float16), "h": np.zeros((50, 3), np.float16)}])
    trace.log_keep = [np.log(1 - z).sum(0, dtype=np.float64)]
    ranked = memory_ranking(trace)
    assert ranked[0].unit == 1 and ranked[0].score == pytest.approx(0.99, abs=1e-3)
    assert ranked[0].half_life == pytest.approx(math.log(0.5) / math.log(0.99), rel=1e-4)


def test_the_rnns_memory_is_the_autocorrelation_of_h() -> None:
    generator = np.random.default_rng(1)
    h = generator.normal(size=(4000, 3))
    for t in range(1, len(h)):
        h[t, 0] = 0.9 * h[t - 1, 0] + generator.normal() * 0.1  # an AR(1) unit: rho 0.9
    ranked = memory_ranking(Trace("rnn", [{"h": h.astype(np.float16)}]))
    assert ranked[0].unit == 0 and ranked[0].score == pytest.approx(0.9, abs=0.03)
    assert ranked[0].half_life == pytest.approx(math.log(0.5) / math.log(ranked[0].score))
    assert all(u.half_life < 1 for u in ranked[1:])  # white noise: no memory


# ---- through a real model ----


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_the_recorded_states_are_the_models_own(checkpoint: Path, impl: str) -> None:
    model = load_model(checkpoint, impl=impl).model
    ids = np.array([3, 5, 8, 1, 0, 2, 9, 4] * 3)
    trace = record(model, ids, model.init_state(1), "lstm")
    with torch.no_grad():
        hidden, state = model.encode(torch.as_tensor(ids).unsqueeze(1), model.init_state(1))  # (T, 1, H)
    assert np.allclose(trace.values[1]["h"], hidden[:, 0].numpy(), atol=1e-3)  # the top layer, float16
    assert np.allclose(trace.values[0]["c"][-1], state[1][0].numpy(), atol=1e-3)  # layer 0's cell
    assert trace.counts[0]["f"][2] == len(ids) * 16  # every forget-gate value counted once
    assert trace.log_keep[0] == pytest.approx(np.log(trace.values[0]["f"].astype(np.float64)).sum(0), rel=1e-3)


def test_json_holds_the_curve_and_both_rankings(checkpoint: Path, text: Path) -> None:
    result = invoke("inspect", checkpoint, "--text", text, "--json", "--max-lag", 30, "--top", 3)
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    assert set(numbers) == set(documented_json_keys("inspect"))
    flow = numbers["gradient_flow"]
    assert flow["lags"] == list(range(1, 31)) and len(flow["norms"]) == len(flow["cell_norms"]) == 30
    assert flow["norms"][0] > flow["norms"][-1] > 0
    assert numbers["hidden_sizes"] == [16, 16] and numbers["tokens"] == len(text.read_text())
    assert [set(layer) for layer in numbers["saturation"]] == [{"i", "f", "o"}] * 2
    assert all(0 <= s["low"] <= 1 and 0 <= s["high"] <= 1 for layer in numbers["saturation"] for s in layer.values())
    assert numbers["memory"]["measure"] == "forget gate f" and len(numbers["memory"]["units"]) == 3
    assert set(numbers["properties"]) == {"line_position", "in_quotes", "in_brackets", "bracket_depth", "indentation"}
    assert len(numbers["properties"]["line_position"]) == 3 and numbers["properties"]["in_quotes"] == []
    assert not list(Path.cwd().glob("speech.txt.inspect.html"))  # --json alone writes no page


def test_the_page_goes_to_its_default_name(checkpoint: Path, text: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("inspect", checkpoint, "--text", text, "--max-lag", 20)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "speech.txt.inspect.html").read_text(encoding="utf-8")
    assert "Wrote speech.txt.inspect.html" in result.output and "LSTM, 2 layers of 16 units" in result.output
    assert "http://" not in page and "https://" not in page and "<link" not in page  # nothing fetched
    data = json.loads(page.split('<script type="application/json" id="data">')[1].split("</script>")[0])
    assert len(data["tokens"]) == len(text.read_text()) and set(data["values"]) == {"0", "1"}
    assert len(data["values"]["1"]) == 16  # a model this small has every unit on the page


# ---- bad input: one line each ----


def test_a_lag_longer_than_the_text_is_clipped_with_a_note(checkpoint: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Speak, speak.\n", encoding="utf-8")  # 14 tokens: lags up to 13
    result = invoke("inspect", checkpoint, "--text", short, "--json", "--max-lag", 500)
    assert result.exit_code == 0
    assert "Note: the text allows lags up to 13" in result.stderr
    assert json.loads(result.stdout)["gradient_flow"]["lags"][-1] == 13


def test_characters_the_model_never_saw_are_named(checkpoint: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd.txt"
    odd.write_text("Speak, señor! Ça va? ñ\n", encoding="utf-8")
    result = invoke("inspect", checkpoint, "--text", odd, "--json")
    assert result.exit_code == 1
    assert result.output == (  # the tiny corpus has no "!" either
        "Error: the text has 3 distinct character(s) the model never saw ('!', 'Ç', 'ñ'), 4 in all; remove or "
        "replace them\n"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "holds no text"), ("S", "the text is 1 token(s) long; inspect needs at least 2")],
)
def test_an_empty_or_one_token_text_is_refused(checkpoint: Path, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.txt"
    path.write_text(content, encoding="utf-8")
    result = invoke("inspect", checkpoint, "--text", path)
    assert result.exit_code == 1 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_bidirectional_checkpoint_is_refused(tiny_corpus: Path, tmp_path: Path, text: Path) -> None:
    train_run(tiny_config(tiny_corpus, "model.bidirectional=true", "train.max_steps=1"), tmp_path / "bi")
    result = invoke("inspect", tmp_path / "bi" / "best.pt", "--text", text)
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: inspect looks into left-to-right models; this checkpoint is bidirectional (model.bidirectional)"
    )


def test_a_damaged_or_missing_checkpoint_is_one_line(tmp_path: Path, text: Path) -> None:
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    result = invoke("inspect", damaged, "--text", text)
    assert result.exit_code == 1 and result.output.startswith("Error: ") and len(result.output.splitlines()) == 1
    missing = invoke("inspect", tmp_path / "none.pt", "--text", text)
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert not list(tmp_path.glob("*.html"))  # nothing written


@pytest.mark.parametrize(
    ("cell", "gates", "measure"),
    [
        ("gru", {"z", "r"}, "update gate z"),
        ("rnn", set(), "lag-1 autocorrelation of h"),
        ("mingru", {"z"}, "keep gate 1 - z"),
        ("minlstm", {"f", "i"}, "normalised forget gate f'"),
    ],
)
def test_every_cell_is_looked_into(tiny_corpus: Path, tmp_path: Path, text: Path, cell, gates, measure) -> None:
    train_run(tiny_config(tiny_corpus, f"model.cell={cell}", "model.impl=reference", "train.max_steps=2"), tmp_path)
    result = invoke(
        "inspect", tmp_path / "best.pt", "--text", text, "--max-lag", 10, "--json", "--out", tmp_path / "p.html"
    )
    numbers = json.loads(result.stdout)
    assert [set(layer) for layer in numbers["saturation"]] == [gates]
    assert numbers["memory"]["measure"] == measure and len(numbers["memory"]["units"]) == 5
    if gates:  # the mean log of the keep gate is at most the log of its mean (Jensen): read from the same gate
        for unit in numbers["memory"]["units"]:
            assert 0 < unit["score"] < 1
            assert unit["half_life"] <= math.log(0.5) / math.log(unit["score"]) * (1 + 1e-3)
    assert "cell_norms" not in numbers["gradient_flow"] and len(numbers["gradient_flow"]["norms"]) == 10
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert ("The RNN has no gates." in page) == (cell == "rnn")


def test_a_word_model_reads_rare_words_as_unk(tiny_corpus: Path, tmp_path: Path) -> None:
    train_run(tiny_config(tiny_corpus, "tokenizer.kind=word", "train.max_steps=2"), tmp_path)
    odd = tmp_path / "odd.txt"
    odd.write_text("Speak, zebra speak.\nAll: resolved ( again )\n", encoding="utf-8")
    result = invoke("inspect", tmp_path / "best.pt", "--text", odd, "--json", "--max-lag", 3)
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    assert numbers["tokens"] == 10 and numbers["gradient_flow"]["lags"] == [1, 2, 3]  # 8 words, 2 line ends
    assert numbers["properties"]["line_position"]  # read from the words' text
    assert numbers["properties"]["in_brackets"] == []  # "(" and ")" are rare words here: <unk>, as the model read them
