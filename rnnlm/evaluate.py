"""Loss, perplexity and bits per token, character and byte over a whole split, in one stateful pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from rnnlm.data.batching import eval_windows
from rnnlm.data.corpus import Split
from rnnlm.models.lm import RNNLM


@dataclass(frozen=True)
class EvalResult:
    nll: float  # total negative log-likelihood, nats
    tokens: int
    chars: int
    bytes: int

    @property
    def loss(self) -> float:
        """Mean nats per token."""
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits_per_char(self) -> float:
        return self.nll / math.log(2) / self.chars

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    def to_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "ppl": self.ppl, "bits_per_token": self.bits_per_token,
                "bits_per_char": self.bits_per_char, "bits_per_byte": self.bits_per_byte,
                "tokens": self.tokens, "chars": self.chars, "bytes": self.bytes}


def evaluate(model: RNNLM, split: Split, *, boundary_id: int, batch_size: int = 1, bptt: int = 256,
             device: torch.device | str = "cpu") -> EvalResult:
    """Score every token of `split` once, carrying the hidden state across windows.

    Uses its own hidden state and eval mode (no dropout), so a validation pass during training
    leaves the training state untouched.
    """
    nll, tokens = score_ids(model, split.ids, boundary_id=boundary_id, batch_size=batch_size, bptt=bptt,
                            device=device)
    return EvalResult(nll, tokens, split.chars, split.bytes)


def score_ids(model: RNNLM, ids: np.ndarray, *, boundary_id: int, batch_size: int, bptt: int,
              device: torch.device | str) -> tuple[float, int]:
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    try:
        with torch.inference_mode():
            state = model.init_state(min(batch_size, max(len(ids), 1)), device)
            for inputs, targets in eval_windows(ids, batch_size, bptt, boundary_id):
                out = model(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True), state)
                total += out.nll.double()
                count += out.tokens
                state = out.state
    finally:
        model.train(was_training)
    return float(total), int(count)
