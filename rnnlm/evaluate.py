"""Loss, perplexity and bits per token, character and byte over a whole split, in one stateful pass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rnnlm.data.batching import eval_windows
from rnnlm.data.corpus import Split
from rnnlm.distributed import Group
from rnnlm.models.lm import RNNLM
from rnnlm.runtime import autocast
from rnnlm.warmstart import mixture_log_probs


MAX_EXP = math.log(float.fromhex("0x1.fffffffffffffp+1023"))  # 709.78: exp of more overflows a float


def perplexity(loss: float) -> float:
    """exp(loss), inf where that overflows (a diverged model's loss), NaN for NaN: never an OverflowError."""
    return math.exp(loss) if loss <= MAX_EXP else (math.inf if loss > MAX_EXP else math.nan)


@dataclass(frozen=True)
class EvalResult:
    nll: float  # total negative log-likelihood, nats
    tokens: int
    chars: int
    bytes: int
    heads: dict[str, EvalResult] = field(default_factory=dict)  # bidirectional: backward, infill

    @property
    def loss(self) -> float:
        """Mean nats per token."""
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    @property
    def bits_per_char(self) -> float:
        return self.nll / math.log(2) / self.chars

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    def to_dict(self) -> dict[str, Any]:
        numbers: dict[str, Any] = {"loss": self.loss, "ppl": self.ppl, "bits_per_token": self.bits_per_token,
                                   "bits_per_char": self.bits_per_char, "bits_per_byte": self.bits_per_byte,
                                   "tokens": self.tokens, "chars": self.chars, "bytes": self.bytes}
        return {**numbers, **{name: head.to_dict() for name, head in self.heads.items()}}


def evaluate(model: RNNLM, split: Split, *, boundary_id: int, batch_size: int = 1, bptt: int = 256,
             device: torch.device | str = "cpu", group: Group | None = None, precision: str = "fp32",
             start: str = "warm") -> EvalResult:
    """Score every token of `split` once, carrying the hidden state across windows.

    Each column starts fresh: with `start` "warm" from the mixture of the model's start states
    (rnnlm/warmstart.py) where it has them (a loaded checkpoint does; a model in training does not,
    so validation starts at zero as it always has), else, and with `start` "zero", from zeros.

    Uses its own hidden state and eval mode (no dropout), so a validation pass during training
    leaves the training state untouched. `precision` bf16 / fp16 runs the forward pass under autocast
    (the sums stay float64). In a distributed run each rank scores a contiguous
    1/world_size of the split (conditioned on the token before it) and the sums are all-reduced.
    """
    ids = split.ids
    if group is not None and group.enabled:
        start, end = len(ids) * group.rank // group.world_size, len(ids) * (group.rank + 1) // group.world_size
        boundary_id = int(ids[start - 1]) if start > 0 else boundary_id
        ids = ids[start:end]
    totals = score_ids(model, ids, boundary_id=boundary_id, batch_size=batch_size, bptt=bptt, device=device,
                       precision=precision, start=start)
    if group is not None and group.enabled:
        names = sorted(totals)
        summed = group.sum([float(v) for name in names for v in totals[name]], torch.device(device))
        totals = {name: (summed[2 * i], int(summed[2 * i + 1])) for i, name in enumerate(names)}
    nll, tokens = totals.pop("")
    heads = {}
    for name, (head_nll, head_tokens) in totals.items():  # chars and bytes pro rata to the tokens scored
        share = head_tokens / max(tokens, 1)
        heads[name] = EvalResult(head_nll, head_tokens, round(split.chars * share), round(split.bytes * share))
    return EvalResult(nll, tokens, split.chars, split.bytes, heads)


def score_ids(model: RNNLM, ids: np.ndarray, *, boundary_id: int, batch_size: int, bptt: int,
              device: torch.device | str, precision: str = "fp32", start: str = "warm"
              ) -> dict[str, tuple[float, int]]:
    """Summed nll and token count per head: "" for the model's own, plus any named extras."""
    was_training = model.training
    model.eval()
    sums: dict[str, list[torch.Tensor]] = {}
    dtype = next(model.parameters()).dtype
    try:
        with torch.inference_mode(), autocast(torch.device(device), precision):
            state = model.init_state(min(batch_size, max(len(ids), 1)), device)
            starts = model.start_states if start == "warm" else None
            for i, (inputs, targets) in enumerate(eval_windows(ids, batch_size, bptt, boundary_id)):
                inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                mixed = None
                if i == 0 and starts is not None:  # each column from the mixture of the start states
                    mixed, choice = mixture_log_probs(model, inputs, targets, starts)
                    state = tuple(s.to(device, dtype)[choice] for s in starts)  # then from the likeliest
                out = model(inputs, targets, state)
                heads = {"": (out.nll if mixed is None else -mixed.sum(), out.tokens)}
                heads.update({name[: -len("_nll")]: (out.extras[name], out.extras[name[:-4] + "_tokens"])
                              for name in out.extras if name.endswith("_nll")})
                for name, (nll, count) in heads.items():
                    total = sums.setdefault(name, [torch.zeros((), dtype=torch.float64, device=device),
                                                   torch.zeros((), dtype=torch.int64, device=device)])
                    total[0] += nll.double()
                    total[1] += count
                state = tuple(s.to(dtype) for s in out.state)  # autocast may hand it back in bf16 / fp16
    finally:
        model.train(was_training)
    return {name: (float(nll), int(count)) for name, (nll, count) in sums.items()} or {"": (0.0, 0)}
