"""The real TensorBoard writer: the tags the README lists, at the right steps, and none twice after a resume."""

import math
import shutil
import time
from collections import defaultdict

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from helpers import tiny_config
from test_train import run

README_TAGS = {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec", "val/loss", "val/ppl"}


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
    for tag in ("val/loss", "val/ppl"):
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
        assert steps == ([3, 6, 9] if tag.startswith("val/") else [2, 4, 6, 8]), tag
    shown = scalars(run_dir)
    assert set(shown) == README_TAGS
    assert all(len({step for step, _ in points}) == len(points) for points in shown.values())
    assert [step for step, _ in shown["val/loss"]] == [3, 6, 9]
