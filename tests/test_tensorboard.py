"""The real TensorBoard writer: the tags the README lists, at the right steps, and none twice after a resume."""

import math
import shutil
import time
from collections import defaultdict

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from helpers import tiny_config
from rnnlm import train as train_module
from rnnlm.checkpoint import load_model
from rnnlm.gradflow import gradient_flow
from rnnlm.inspect import LOGGED_TOKENS, record
from test_train import run

TRAINING_TAGS = {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec", "val/loss", "val/ppl"}
# at every validation, what the tiny one-layer LSTM does inside (rnnlm/inspect.py log_inside)
INSIDE_TAGS = {f"gradflow/lag_{lag}" for lag in (1, 10, 50, 100)} | {
    f"saturation/layer0_{gate}_{side}" for gate in "ifo" for side in ("low", "high")
}
README_TAGS = TRAINING_TAGS | INSIDE_TAGS


def on(corpus, *overrides):
    return tiny_config(corpus, "train.tensorboard=true", "train.log_every=2", "train.eval_every=3", *overrides)


def scalars(run_dir):
    """{tag: [(step, value), ...]} as TensorBoard shows them."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def raw_steps(run_dir):
    """{tag: [step, ...]} read straight from the event files in order, applying only the purges the files
    ask for (a SessionLog START at step s hides the earlier events from step s on)."""
    steps = defaultdict(list)
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                for tag in steps:
                    steps[tag] = [step for step in steps[tag] if step < event.step]
            for value in event.summary.value:
                steps[value.tag].append(event.step)
    return dict(steps)


def next_second():
    """Event file names start with the second they were opened in: keep a later writer's file sorting later."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def test_a_run_logs_every_readme_tag_at_its_steps(tiny_corpus, tmp_path):
    trainer, _ = run(on(tiny_corpus, "train.max_steps=7"), tmp_path / "run")
    logged = scalars(tmp_path / "run")
    assert set(logged) == README_TAGS
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec"):
        assert [step for step, _ in logged[tag]] == [2, 4, 6], tag
    for tag in ("val/loss", "val/ppl", *INSIDE_TAGS):
        assert [step for step, _ in logged[tag]] == [3, 6, 7], tag  # every 3 steps, and at the end
    train_losses = [entry["loss"] for entry in trainer.history if "loss" in entry]
    assert [value for _, value in logged["train/loss"]] == pytest.approx(train_losses, rel=1e-6)
    val_losses = [entry["val_loss"] for entry in trainer.history if "val_loss" in entry]
    assert [value for _, value in logged["val/loss"]] == pytest.approx(val_losses, rel=1e-6)
    assert [value for _, value in logged["val/ppl"]] == pytest.approx([math.exp(v) for v in val_losses])
    assert [value for _, value in logged["train/lr"]] == [1.0, 1.0, 1.0]


def test_a_resumed_run_logs_no_step_twice(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    run(on(tiny_corpus, "train.max_steps=3"), run_dir)
    shutil.copy(run_dir / "last.pt", tmp_path / "at_step_3.pt")
    next_second()
    run(on(tiny_corpus, "train.max_steps=9"), run_dir, resume=True)
    # a crash after steps 4..9 were logged, before last.pt moved past step 3: the next resume logs them again
    shutil.copy(tmp_path / "at_step_3.pt", run_dir / "last.pt")
    next_second()
    run(on(tiny_corpus, "train.max_steps=9"), run_dir, resume=True)
    logged = raw_steps(run_dir)
    assert set(logged) == README_TAGS
    for tag, steps in logged.items():
        assert steps == ([2, 4, 6, 8] if tag in TRAINING_TAGS - {"val/loss", "val/ppl"} else [3, 6, 9]), tag
    shown = scalars(run_dir)
    assert set(shown) == README_TAGS
    assert all(len({step for step, _ in points}) == len(points) for points in shown.values())
    assert [step for step, _ in shown["val/loss"]] == [3, 6, 9]


def test_the_inside_numbers_are_those_of_the_model_validated(tiny_corpus, tmp_path):
    trainer, _ = run(on(tiny_corpus, "train.max_steps=7"), tmp_path / "run")
    logged = scalars(tmp_path / "run")
    model = load_model(tmp_path / "run" / "last.pt").model  # the weights of step 7, validated last
    ids = np.asarray(trainer.corpus.splits["valid"].ids[:LOGGED_TOKENS], dtype=np.int64)
    flow = gradient_flow(model, torch.from_numpy(ids), max_lag=100, positions=8, warmup=20)
    for lag in (1, 10, 50, 100):
        assert logged[f"gradflow/lag_{lag}"][-1] == (7, pytest.approx(flow.norms[lag - 1], rel=1e-5))
    assert flow.norms[0] > flow.norms[99] > 0
    gates = record(model, ids[: LOGGED_TOKENS // 2], model.init_state(1), "lstm")
    below = (gates.values[0]["f"].astype(np.float32) < 0.1).mean()  # float16 moves a value across 0.1 rarely
    assert logged["saturation/layer0_f_low"][-1][1] == pytest.approx(below, abs=0.01)


def test_looking_inside_changes_no_weight_and_runs_only_with_tensorboard(tiny_corpus, tmp_path, monkeypatch):
    calls = []
    inside = train_module.log_inside
    monkeypatch.setattr(train_module, "log_inside", lambda *args: calls.append(args[-1]) or inside(*args))
    off = on(tiny_corpus, "train.max_steps=7", "train.tensorboard=false", "model.dropout=0.3")
    quiet, _ = run(off, tmp_path / "off")
    assert calls == []
    logging, _ = run(on(tiny_corpus, "train.max_steps=7", "model.dropout=0.3"), tmp_path / "on")
    assert calls == [3, 6, 7]
    for (name, a), b in zip(quiet.model.state_dict().items(), logging.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # bit for bit, dropout draws included
    assert quiet.history == logging.history  # every loss, training and validation, the same
