"""What a training run knows about itself while it runs: its progress and counters in one `TrainState`,
the throughput `Meter`, and the `TrainSummary` that `Trainer.fit` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnlm.evaluate import EvalResult
from rnnlm.models.stack import State


@dataclass
class TrainSummary:
    steps: int
    epochs_done: int
    best_val_loss: float | None
    last_val: EvalResult | None
    run_dir: Path
    tokens: int  # tokens trained on in this fit() call, by all ranks together
    train_seconds: float  # time in training steps, validation and checkpoint writes excluded

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / max(self.train_seconds, 1e-9)


class Meter:
    """Tokens and seconds of training steps: in total, and since the last window()."""

    def __init__(self) -> None:
        self.tokens, self.seconds = 0, 0.0
        self._tokens, self._seconds = 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self._tokens += tokens
        self._seconds += seconds

    def window(self) -> float:
        """Tokens per second since the last call."""
        speed = self._tokens / max(self._seconds, 1e-9)
        self._tokens, self._seconds = 0, 0.0
        return speed


@dataclass
class TrainState:
    """Everything about a run that changes while it trains; what is built once (model, optimizer, data)
    stays on the Trainer. `saved` says what a checkpoint keeps under "trainer"."""

    step: int = 0  # optimizer steps taken
    epoch: int = 1  # the epoch being trained (1-based); epochs done is epoch - 1
    best_val: float | None = None  # the lowest validation loss so far
    history: list[dict[str, Any]] = field(default_factory=list)  # {"step", "loss"} and {"step", "val_loss"}
    start_step: int = 0  # the step this fit started from (0, or a resumed run's)
    last_val: EvalResult | None = None
    last_eval_step: int = -1  # the step of the last validation (a resumed run counts its checkpoint's)
    skipped: int = 0  # non-finite steps skipped in a row
    above_limit: int = 0  # log points in a row whose mean training loss was above the divergence limit
    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, [loss, grad norm]) unread
    meter: Meter = field(default_factory=Meter)  # this fit's throughput
    start_states: tuple[int, State | None] | None = None  # (step, the warm start states computed at that step)
    # train.max_time: seconds of the budget spent by earlier fits of this run (from the checkpoint), and in all
    # as of the last reading of the clock (under torchrun rank 0's, shared); whether the budget is spent, and
    # the share of the training time (the budget less the final validation's) spent, which the cosine follows
    time_before: float = 0.0
    time_spent: float = 0.0
    time_up: bool = False
    time_progress: float = 0.0
    validation_seconds: float | None = None  # on the trainer's clock, the last validation with its saves

    def saved(self) -> dict[str, Any]:
        """The part a checkpoint keeps."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "best_val": self.best_val,
            "history": self.history,
            "time_spent": self.time_spent,  # the trainer saves its clock's reading at the save
        }

    def load(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's "trainer" entry: validated at its step, so a finished run that resumes
        does not validate again."""
        self.step, self.epoch, self.best_val = saved["step"], saved["epoch"], saved["best_val"]
        self.history = list(saved["history"])
        self.last_eval_step = self.step
        self.time_before = self.time_spent = float(saved.get("time_spent", 0.0))  # none before train.max_time
