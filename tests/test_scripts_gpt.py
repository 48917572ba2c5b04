"""scripts/baby_gpt.py, the transformer baseline of scripts/budget_quality.py: its parameter count, causality,
scoring every validation character exactly once, and a short training run; and budget_quality.py's record of a run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "baby_gpt.py"


@pytest.fixture(scope="module")
def baby_gpt():
    spec = importlib.util.spec_from_file_location("baby_gpt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setitem(sys.modules, "baby_gpt", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    monkeypatch.undo()


@pytest.fixture(scope="module")
def budget_quality():
    spec = importlib.util.spec_from_file_location("budget_quality", SCRIPT.with_name("budget_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(baby_gpt, vocab: int = 11, block: int = 8):
    torch.manual_seed(0)
    return baby_gpt.BabyGPT(baby_gpt.GPTConfig(vocab, block_size=block, num_layers=2, num_heads=2, width=16))


def test_parameter_count_formula(baby_gpt) -> None:
    model = tiny_model(baby_gpt)
    assert baby_gpt.parameter_count(model.config) == sum(p.numel() for p in model.parameters())
    # nanoGPT's CPU shape on tinyshakespeare's 65 characters plus <unk>: 0.81M with the position embedding
    assert baby_gpt.parameter_count(baby_gpt.GPTConfig(66)) == 809_984


def test_dropout_acts_in_training_only(baby_gpt) -> None:
    plain = tiny_model(baby_gpt)
    torch.manual_seed(0)
    config = baby_gpt.GPTConfig(11, block_size=8, num_layers=2, num_heads=2, width=16, dropout=0.5)
    dropped = baby_gpt.BabyGPT(config)
    dropped.load_state_dict(plain.state_dict())  # dropout adds no parameter
    ids = torch.randint(11, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(ids), plain.eval()(ids), rtol=0, atol=0)
        dropped.train()
        first, second = dropped(ids), dropped(ids)
    assert not torch.allclose(first, second)  # a fresh mask per call
    assert not torch.allclose(first, plain(ids))


def test_attention_is_causal(baby_gpt) -> None:
    model = tiny_model(baby_gpt).eval()
    ids = torch.randint(11, (2, 8))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[:, :5], model(changed)[:, :5])
        assert not torch.allclose(model(ids)[:, 5:], model(changed)[:, 5:])


def test_evaluate_scores_every_character_once(baby_gpt) -> None:
    model = tiny_model(baby_gpt)
    short = torch.randint(11, (9,))  # one window: the mean over a single forward pass
    with torch.no_grad():
        direct = F.cross_entropy(model(short[None, :-1])[0], short[1:]).item()
    loss, scored = baby_gpt.evaluate(model, short)
    assert scored == 8 and loss == pytest.approx(direct, rel=1e-6)
    long = torch.randint(11, (103,))  # windows every 4 and a tail window that does not fall on the stride
    assert baby_gpt.evaluate(model, long, batch_size=5)[1] == 102
    # with stride 1 every target is scored once with as much context as the block holds: the naive sum
    loss, scored = baby_gpt.evaluate(model, long, stride=1, batch_size=7)
    with torch.no_grad():
        naive = [F.cross_entropy(model(long[None, max(0, t - 8) : t])[0, -1], long[t]).item() for t in range(1, 103)]
    assert scored == 102 and loss == pytest.approx(sum(naive) / 102, rel=1e-5)


def test_short_training_run(baby_gpt, tmp_path: Path) -> None:
    train_path, valid_path = tmp_path / "train.txt", tmp_path / "valid.txt"
    train_path.write_text("to be or not to be, that is the question\n" * 20, encoding="utf-8")
    valid_path.write_text("to be or not to bee?\n", encoding="utf-8")  # '?' is not in training: <unk>
    train_ids, valid_ids, vocab = baby_gpt.encode_files(train_path, valid_path)
    assert vocab == len(set(train_path.read_text())) + 1 and valid_ids[0] == train_ids[40]  # a newline first
    model = tiny_model(baby_gpt, vocab)
    result = baby_gpt.train(model, train_ids, budget=0, max_steps=2, lr=1e-3, batch_size=4)
    assert result["steps"] == 2 and math.isfinite(result["train_loss"])
    loss, scored = baby_gpt.evaluate(model, valid_ids)
    assert scored == 21 and math.isfinite(loss) and loss == pytest.approx(math.log(vocab), abs=0.5)


def test_learning_rate_schedule(baby_gpt) -> None:
    assert baby_gpt.learning_rate(0.025, 1e-3) == pytest.approx(5e-4)  # half way through the warm-up
    assert baby_gpt.learning_rate(0.05, 1e-3) == pytest.approx(1e-3)
    assert baby_gpt.learning_rate(1.0, 1e-3) == pytest.approx(1e-4)
    assert baby_gpt.learning_rate(2.0, 1e-3) == pytest.approx(1e-4)  # past the budget: stays at the floor


def test_budget_report_keeps_dropout_settings_apart(budget_quality) -> None:
    run = {"budget": 3600.0, "model": "gru-xl", "lr": 4e-3, "parameters": 2_501_826, "steps": 100,
           "tokens_per_second": 1.0, "tokens_per_cpu_second": 1.0, "cpu_seconds": 3600.0, "train_seconds": 3600.0}
    rows = [{**run, "val_loss": 1.50}, *({**run, "val_loss": loss, "dropout": 0.2} for loss in (1.40, 1.46))]
    table = budget_quality.summarize(rows)  # a row from before the dropout option reads as dropout 0
    assert [(t["dropout"], t["seeds"], t["mean"]) for t in table] == [(0.0, 1, 1.50), (0.2, 2, pytest.approx(1.43))]
    lines = budget_quality.markdown(table).splitlines()
    assert "| dropout |" in lines[0]
    expected = "| tinyshakespeare | 60 min | gru-xl | 0.004 | 0.2 | 2 | 1.4300 | 1.4000 - 1.4600 | 2.0631 |"
    assert lines[3].startswith(expected)  # 1.43 nats per ASCII character = 2.0631 bits per byte


def test_budget_sizes_that_claim_equal_parameters_have_them(budget_quality, tmp_path) -> None:
    """The 0.88M sizes (lstm, gru, the scan cells plain and in their layout) within 1% of the LSTM's count."""
    from rnnlm.config import load_config
    from rnnlm.models import build_model

    counts = {}
    for size in ("lstm", "gru", "mingru", "minlstm", "mingru-block", "minlstm-block"):
        overrides = budget_quality.rnn_overrides(tmp_path, size, 1e-3, 1, 1, 0.0)
        model = build_model(66, load_config(None, [*overrides, "train.max_time=1m"]).model)
        counts[size] = model.num_parameters()
    assert all(abs(n / counts["lstm"] - 1) < 0.01 for n in counts.values()), counts
    assert counts["lstm"] == 877_250


def test_the_report_groups_sizes_into_a_family_but_keeps_a_layout_apart(budget_quality) -> None:
    names = ["gru", "gru-xl", "lstm-s", "gpt-l", "mingru", "mingru-block", "minlstm-block"]
    assert [budget_quality.family(n) for n in names] == ["gru", "gru", "lstm", "gpt", "mingru", "mingru-block",
                                                        "minlstm-block"]


def test_the_ptb_chart_draws_bits_per_byte_without_the_shakespeare_goal(budget_quality) -> None:
    run = {"budget": 600.0, "lr": 6e-3, "parameters": 1, "steps": 1, "tokens_per_second": 1.0,
           "tokens_per_cpu_second": 1.0, "cpu_seconds": 600.0, "train_seconds": 600.0, "corpus": "ptb"}
    rows = [{**run, "model": "gru", "val_loss": 1.1, "bits_per_byte": bits} for bits in (1.58, 1.62)]
    rows.append({**run, "model": "gpt", "val_loss": 1.2, "bits_per_byte": 1.78})
    table = budget_quality.summarize(rows)
    assert [(t["model"], t["bits_min"], t["bits_max"]) for t in table] == [("gpt", 1.78, 1.78), ("gru", 1.58, 1.62)]
    svg = budget_quality.svg_chart(table, budget_quality.BITS, goal=None)
    assert ">1.600</text>" in svg and ">1.780</text>" in svg  # the bars' labels: the mean bits per byte
    assert "bits per byte" in svg and "stroke-dasharray" not in svg and "1.47" not in svg
    assert ">1.5</text>" in svg  # the axis starts below the lowest whisker (1.58), so every bar shows
    shakespeare = budget_quality.svg_chart(table)
    assert ">1.100</text>" in shakespeare and "stroke-dasharray" in shakespeare  # the loss, and the 1.47 line


def test_a_budget_run_records_the_score_of_its_last_model_and_the_trainers_best(
    budget_quality, tmp_path, capsys
) -> None:
    text = "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n" * 60
    (tmp_path / "train.txt").write_text(text, encoding="utf-8")
    (tmp_path / "valid.txt").write_text(text[:500], encoding="utf-8")
    args = argparse.Namespace(
        folder=tmp_path, size="gru-s", lr=6e-3, seed=1, budget=3.0, threads=1, dropout=0.0, clock="cpu"
    )
    budget_quality.run_one(args)
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["model"] == "gru-s" and record["steps"] >= 1
    assert record["stop"] == "max_time (cpu clock)"
    assert record["val_chars"] == 500  # every validation character scored once
    vocab = len(set(text)) + 1  # and <unk>
    assert record["val_loss"] < math.log(vocab) - 0.2  # it learned: 12 steps in 2 s took it 0.48 below uniform
    # the Trainer validates at each epoch end and at the end; its best is at most its last
    assert record["trainer_best_val_loss"] <= record["trainer_val_loss"]
    assert record["bits_per_byte"] == pytest.approx(record["val_loss"] / math.log(2))  # ASCII: a byte a character
