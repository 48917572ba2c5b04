"""Optimizers and learning-rate schedules by name; schedules keep their state as a plain dict."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from rnnlm.config import OptimConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    params = list(parameters)
    if config.name == "sgd":  # the notes' minibatched SGD: theta <- theta - lr * grad
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, foreach=True)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


class Schedule:
    """Sets the optimizer's learning rate at epoch starts and after validations.

    plateau: multiply by lr_decay whenever validation loss fails to improve on its best
    (the classic word-level recipe divides by 4). step: epochs 1..decay_start run at the initial
    rate, each later epoch multiplies it by lr_decay (Zaremba et al. 2014). constant: never changes.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: OptimConfig) -> None:
        self.optimizer = optimizer
        self.config = config
        self.lr = config.lr
        self.best: float | None = None

    def epoch_start(self, epoch: int) -> None:
        """Called before epoch `epoch` (1-based) begins."""
        if self.config.schedule == "step":
            self._set(self.config.lr * self.config.lr_decay ** max(0, epoch - self.config.decay_start))

    def validated(self, loss: float) -> None:
        if self.best is None or loss < self.best:
            self.best = loss
        elif self.config.schedule == "plateau":
            self._set(self.lr * self.config.lr_decay)

    def _set(self, lr: float) -> None:
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self._set(state["lr"])
