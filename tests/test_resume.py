"""Resume policy (rnnlm/resume.py): every resumable key, changed on a real resume, does what the policy says."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

from helpers import invoke, tiny_config, train_run
from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import load_config
from rnnlm.errors import ConfigError
from rnnlm.optim import Schedule
from rnnlm.resume import RESUMABLE, requested_changes, resume_config

# The original run: reference cells, so that train.precision=bf16 runs on any CPU; 6 steps, then 6 resumed.
BASE = ("model.impl=reference", "train.max_steps=6", "train.eval_every=3")
RESUMED_STEPS = 12


@dataclass(frozen=True)
class Case:
    value: Any  # the value the resume asks for
    base: tuple[str, ...] = ()  # what the original run sets besides BASE
    check: Callable[[Any, Any], None] | None = None  # (resumed trainer, unchanged resume) -> asserts


def validation_steps(trainer) -> list[int]:
    return [entry["step"] for entry in trainer.history if "val_loss" in entry]


def check_eval_every(resumed, unchanged) -> None:
    assert validation_steps(resumed) == [3, 6, 8, 10, 12]  # every 2 steps from the resumed one on
    assert validation_steps(unchanged) == [3, 6, 9, 12]


def check_eval_batch_size(resumed, unchanged) -> None:
    assert resumed.history[-1]["val_loss"] != unchanged.history[-1]["val_loss"]  # other streams, another number


def check_epochs(resumed, unchanged) -> None:
    assert resumed.epoch == 3 and resumed.step == 2 * len(resumed.batches)


# One case per key of the policy: a key added to RESUMABLE fails test_each_resumable_key until it has one.
CASES = {
    "train.epochs": Case(2, base=("train.max_steps=0", "train.epochs=1", "train.eval_every=0"), check=check_epochs),
    "train.max_steps": Case(20, base=("optim.schedule=cosine", "optim.name=adam", "optim.lr=0.01")),
    "train.max_time": Case("2h", base=("train.max_time=1h",)),
    "train.eval_every": Case(2, check=check_eval_every),
    "train.eval_batch_size": Case(3, check=check_eval_batch_size),
    "train.precision": Case("bf16"),
    "train.device": Case("auto"),
    "model.loss_chunk": Case(5),
    "model.fused_loss": Case(False),
    "train.log_every": Case(4),
    "train.num_threads": Case(2),
    "train.tensorboard": Case(True),
    "train.dist_timeout": Case(60),
    "data.cache_dir": Case("{tmp}/elsewhere"),
    "model.init_embeddings": Case("{tmp}/no-such-vectors.txt", base=("tokenizer.kind=word",)),  # never read
}


@pytest.mark.parametrize("key", sorted(RESUMABLE))
def test_each_resumable_key(key, tiny_corpus, tmp_path, monkeypatch):
    case = CASES[key]
    value = case.value.format(tmp=tmp_path) if isinstance(case.value, str) else case.value
    base = [*BASE, *case.base]
    epochs = key == "train.epochs"
    train_run(tiny_config(tiny_corpus, *base), tmp_path / "cut")
    shutil.copytree(tmp_path / "cut", tmp_path / "same")
    longer = [] if epochs else [f"train.max_steps={RESUMED_STEPS}"]
    unchanged, _ = train_run(tiny_config(tiny_corpus, *base, *longer), tmp_path / "same", resume=True)
    config = tiny_config(tiny_corpus, *base, *longer, f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    rates: list[tuple[int, float]] = []
    step_start = Schedule.step_start
    monkeypatch.setattr(Schedule, "step_start",
                        lambda self, step, *rest: (step_start(self, step, *rest), rates.append((step, self.lr)))[0])
    resumed, _ = train_run(config, tmp_path / "cut", resume=True)

    section, _, name = key.partition(".")
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["config"][section][name] == value  # in effect, and kept
    assert resumed.step == (2 * len(resumed.batches) if epochs else config.train.max_steps)  # the run went on
    effect = RESUMABLE[key].effect
    val_loss = resumed.history[-1]["val_loss"]  # the end-of-run validation, at the same step for both
    if effect == "nothing":  # the same weights, bit for bit
        assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), unchanged.model.parameters()))
        assert val_loss == unchanged.history[-1]["val_loss"]
    elif effect == "rounding":
        tolerance = 0.02 if key == "train.precision" else 1e-4
        assert val_loss == pytest.approx(unchanged.history[-1]["val_loss"], rel=tolerance)
    if key == "train.max_steps":  # the cosine schedule now decays over 20 steps: the resumed step's rate says so
        o = config.optim
        at_resumed_step = dict(rates)[6]  # the rate set before step 7, the first after the resume
        assert at_resumed_step == pytest.approx(o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * 6 / 20)))
        assert at_resumed_step > 0.75 * o.lr  # decaying over 12 steps it would be half the rate
    if case.check:
        case.check(resumed, unchanged)


def test_a_change_the_policy_refuses_is_one_line_and_changes_nothing(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    common = [f"data.corpus={tiny_corpus}", "model.embed_size=8", "model.hidden_size=16", "model.num_layers=1",
              "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=4", "train.tensorboard=false",
              "data.valid_fraction=0.1", "data.test_fraction=0.1"]
    assert invoke("train", "--run-dir", run_dir, *common).exit_code == 0
    before = (run_dir / "last.pt").read_bytes()
    result = invoke("train", "--resume", run_dir, "model.hidden_size=32", "train.max_steps=8")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("Error: cannot change these settings when "
                                                                      "resuming a run: model.hidden_size (run has "
                                                                      "16, asked for 32)")
    assert (run_dir / "last.pt").read_bytes() == before


def test_resume_allows_run_length_changes_only():
    saved = load_config(None, ["model.hidden_size=32", "train.max_steps=10"])
    resumed = resume_config(saved, {"train.max_steps": 20, "model.hidden_size": 32})
    assert resumed.train.max_steps == 20 and resumed.model.hidden_size == 32
    with pytest.raises(ConfigError, match=r"model.hidden_size \(run has 32, asked for 64\)"):
        resume_config(saved, {"model.hidden_size": 64})


def test_requested_changes_are_only_the_mentioned_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 64\n")
    assert requested_changes(path, ["train.max_steps=5"]) == {"model.hidden_size": 64, "train.max_steps": 5}
