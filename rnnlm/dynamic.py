"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, "Dynamic Evaluation of Neural Sequence Models"):
the model adapts to the text it reads, on a copy of its weights.

The stream is cut into segments s_1, s_2, ... of `segment` tokens. Each segment is scored with the weights
theta_{i-1}, which have seen only the segments before it; then a gradient step on its loss L(s_i) (mean
nats per token) gives theta_i:

    sgd:  theta_i = theta_{i-1} - lr grad L(s_i) + decay (theta_0 - theta_{i-1})
    rms:  theta_i = theta_{i-1} - lr grad L(s_i) / (sqrt(MS) + eps) + min(1, decay RMS_norm) (theta_0 - theta_{i-1})

theta_0 are the trained weights, MS the mean squared gradient of L per parameter, collected before
evaluation on segments of the model's training split (`gradient_statistics`, as the paper does), and
RMS_norm = sqrt(MS) / mean(sqrt(MS)) over every weight, so that weights whose gradients are large also
return to the trained values faster (the paper's global decay prior). The paper runs over the whole
training split; here a sample of `tokens` of it, spread evenly: the statistic is a mean, and a sample of
tens of thousands of segments estimates it well at a small fraction of an epoch's cost.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from rnnlm.errors import UsageError
from rnnlm.models import LanguageModel

METHODS = ("sgd", "rms")


class PrecisionRefused(UsageError):
    """Dynamic evaluation needs full-precision weights: a bf16 / fp16 gradient step rounds to nothing."""


@dataclass(frozen=True)
class DynamicSettings:
    method: str = "rms"
    lr: float = 1e-4  # eta: the best of 1e-4 and 3e-4 for ptb-small (1 epoch) on 20k PTB test tokens
    decay: float = 0.005  # lambda: pull back to the trained weights (beat 0.02 and 0 with sgd on ptb-small, epoch 4)
    segment: int = 20  # tokens scored between two updates (the paper: 5 on PTB; longer is faster on a CPU)
    epsilon: float = 1e-5  # keeps the RMS-normalised step finite where MS is ~0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"dynamic evaluation's method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"the dynamic evaluation learning rate must be a finite number > 0, not {self.lr}")
        if not (math.isfinite(self.decay) and 0 <= self.decay <= 1):
            raise UsageError(f"the dynamic evaluation decay must be in [0, 1], not {self.decay}")
        if self.segment < 1:
            raise UsageError(f"the dynamic evaluation segment must be at least 1 token, not {self.segment}")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise UsageError(f"the dynamic evaluation epsilon must be a finite number > 0, not {self.epsilon}")


def check_weights(model: LanguageModel) -> None:
    """Refuse weights below float32, in one line."""
    low = sorted(
        {
            str(p.dtype).replace("torch.", "")
            for p in model.parameters()
            if p.dtype not in (torch.float32, torch.float64)
        }
    )
    if low:
        raise PrecisionRefused(
            f"dynamic evaluation needs float32 weights, and this model's are {', '.join(low)}: "
            f"its small gradient steps would round away (load it in fp32)"
        )


def gradient_statistics(
    model: LanguageModel, ids: np.ndarray, *, segment: int, tokens: int = 50_000, pieces: int = 64
) -> dict[str, torch.Tensor]:
    """MS per parameter name: the mean over segments of `segment` tokens of the squared gradient of their mean
    loss, read with the carried state (as scoring reads them) from `pieces` stretches spread evenly over
    `ids` (a training split), `tokens` in all. The model is not changed."""
    check_weights(model)
    device = model.device
    named = [(name, p) for name, p in model.named_parameters()]
    sums = {name: torch.zeros_like(p) for name, p in named}
    count = 0
    pieces = max(1, min(pieces, tokens // segment, len(ids) // (segment + 1)))
    length = min(tokens // pieces, len(ids) // pieces - 1)
    starts = np.linspace(0, len(ids) - length - 1, pieces).round().astype(np.int64)
    was_training = model.training
    model.eval()
    try:
        for start in starts:
            stretch = torch.from_numpy(np.asarray(ids[start : start + length + 1], dtype=np.int64)).to(device)
            state = model.init_state(1, device)
            for i in range(0, length - segment + 1, segment):
                inputs, targets = stretch[i : i + segment].unsqueeze(1), stretch[i + 1 : i + segment + 1].unsqueeze(1)
                out = model(inputs, targets, state)
                grads = torch.autograd.grad(out.nll / out.tokens, [p for _, p in named], allow_unused=True)
                for (name, _), grad in zip(named, grads, strict=True):
                    if grad is not None:
                        sums[name] += grad.detach() ** 2
                state, count = tuple(s.detach() for s in out.state), count + 1
    finally:
        model.train(was_training)
    if count == 0:
        raise UsageError(f"the text is too short to collect gradient statistics over segments of {segment} tokens")
    return {name: total / count for name, total in sums.items()}


class Adapter:
    """A copy of a model whose weights follow the text: `model` to score with, `update` after each segment.

    The given model, and so its checkpoint, stay as they are."""

    def __init__(
        self, model: LanguageModel, settings: DynamicSettings, statistics: dict[str, torch.Tensor] | None = None
    ) -> None:
        check_weights(model)
        if settings.method == "rms" and statistics is None:
            raise UsageError(
                "RMS dynamic evaluation needs gradient statistics (gradient_statistics on the training split)"
            )
        self.settings = settings
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(True)
        self.named = list(self.model.named_parameters())
        self.trained = [p.detach().clone() for _, p in self.named]
        self.scale: list[torch.Tensor | None] = [None] * len(self.named)
        self.pull: list[torch.Tensor | float] = [settings.decay] * len(self.named)
        if settings.method == "rms":
            assert statistics is not None
            rms = [statistics[name].to(p.device, p.dtype).sqrt() for name, p in self.named]
            mean = sum(float(r.sum()) for r in rms) / max(sum(r.numel() for r in rms), 1)
            self.scale = [1.0 / (r + settings.epsilon) for r in rms]
            self.pull = [(settings.decay * r / max(mean, 1e-30)).clamp(max=1.0) for r in rms]

    def update(self, loss: torch.Tensor) -> None:
        """One step on `loss` (the mean nats per token of the segment just scored), and the decay."""
        grads = torch.autograd.grad(loss, [p for _, p in self.named], allow_unused=True)
        lr = self.settings.lr
        with torch.no_grad():  # in place, one pass per term: the step costs about what the backward pass does
            for (_, p), grad, trained, scale, pull in zip(
                self.named, grads, self.trained, self.scale, self.pull, strict=True
            ):
                if not isinstance(pull, float) or pull > 0:
                    p.lerp_(trained, pull)  # p + pull (trained - p)
                if grad is not None and scale is not None:
                    p.addcmul_(grad, scale, value=-lr)
                elif grad is not None:
                    p.add_(grad, alpha=-lr)
