"""Optimizers, learning-rate schedules and NT-ASGD's weight averaging, each with a plain-dict state."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from rnnlm.config import OptimConfig


def build_optimizer(parameters: Iterable[nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    params = list(parameters)
    if config.name in ("sgd", "ntasgd"):  # the notes' minibatched SGD: theta <- theta - lr * grad
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, foreach=True
        )
    if config.name == "adamw":  # decoupled weight decay (Loshchilov & Hutter 2019)
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


class Schedule:
    """Sets the optimizer's learning rate; the rate it sets is the rate logged.

    plateau: multiply by lr_decay whenever validation loss fails to improve on its best
    (the classic word-level recipe divides by 4). step: epochs 1..decay_start run at the initial
    rate, each later epoch multiplies it by lr_decay (Zaremba et al. 2014). cosine: linear warmup
    over warmup_steps, then a half cosine down to min_lr at the last step. constant: never changes.
    With a time budget (train.max_time, in seconds) the cosine runs over the time instead of the steps:
    its progress is the share of the training time spent, warmup included, which the trainer measures, so
    a short run is a whole cosine.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int = 0, budget: float = 0.0
    ) -> None:
        self.optimizer = optimizer
        self.config = config
        self.total_steps = total_steps
        self.budget = budget
        self.lr = config.lr
        self.best: float | None = None
        if config.schedule == "cosine":
            self.step_start(0)

    def epoch_start(self, epoch: int) -> None:
        """Called before epoch `epoch` (1-based) begins."""
        if self.config.schedule == "step":
            self._set(self.config.lr * self.config.lr_decay ** max(0, epoch - self.config.decay_start))

    def step_start(self, step: int, time_progress: float = 0.0) -> None:
        """Called before optimizer step `step` + 1: `step` steps are done, and with a time budget, this share
        (0 to 1) of the training time is spent."""
        c = self.config
        if c.schedule != "cosine":
            return
        if step < c.warmup_steps:
            self._set(c.lr * (step + 1) / c.warmup_steps)
            return
        if self.budget:
            progress = min(time_progress, 1.0)
        else:
            progress = min((step - c.warmup_steps) / max(self.total_steps - c.warmup_steps, 1), 1.0)
        self._set(c.min_lr + (c.lr - c.min_lr) * 0.5 * (1 + math.cos(math.pi * progress)))

    def validated(self, loss: float) -> None:
        if self.best is None or loss < self.best:
            self.best = loss
        elif self.config.schedule == "plateau":
            self._set(self.lr * self.config.lr_decay)

    @contextlib.contextmanager
    def scaled(self, factor: float) -> Iterator[None]:
        """Scale the rate for one step (variable-length BPTT windows: lr x length / bptt)."""
        if factor == 1.0:
            yield
            return
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * factor
        try:
            yield
        finally:
            self._set(self.lr)

    def _set(self, lr: float) -> None:
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self._set(state["lr"])


class Averager:
    """Non-monotonically triggered averaged SGD (NT-ASGD, Merity et al. 2017).

    Plain SGD until the validation loss is worse than the best loss seen more than `nonmono`
    validations ago; from then on keep the running mean of the weights after every step, and
    evaluate and save that mean. Off unless optim.name is ntasgd.
    """

    def __init__(self, model: nn.Module, config: OptimConfig) -> None:
        self.model = model
        self.enabled = config.name == "ntasgd"
        self.nonmono = config.nonmono
        self.history: list[float] = []
        self.count = 0
        self.average: list[torch.Tensor] | None = None

    @property
    def active(self) -> bool:
        return self.average is not None

    def validated(self, loss: float) -> bool:
        """Record a validation loss; start averaging when triggered. True if it started now."""
        self.history.append(loss)
        earlier = self.history[: -self.nonmono - 1]
        if self.enabled and not self.active and earlier and loss > min(earlier):
            self.average = [p.detach().clone() for p in self.model.parameters()]
            self.count = 1
            return True
        return False

    @torch.no_grad()
    def update(self) -> None:
        """Fold the weights after an optimizer step into the running mean."""
        if self.average is None:
            return
        self.count += 1
        for mean, p in zip(self.average, self.model.parameters(), strict=True):
            mean.add_(p.detach() - mean, alpha=1.0 / self.count)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own weights again after."""
        if self.average is None:
            yield
            return
        params = list(self.model.parameters())
        own = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, mean in zip(params, self.average, strict=True):
                p.copy_(mean)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(params, own, strict=True):
                    p.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """History and count; the averaged weights themselves are saved as a model state_dict."""
        return {"history": list(self.history), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """`state` adds "average": the averaged weights in parameter order, or None."""
        self.history, self.count = list(state["history"]), state["count"]
        device = next(self.model.parameters()).device
        self.average = [t.to(device) for t in state["average"]] if state["average"] is not None else None
