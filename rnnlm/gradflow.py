"""Gradient flow through time: how much the loss at step t still says about the state k steps before.

The lecture's claim that gated cells have "less vanishing gradient" (seed notes, GRU intuition), measured on any
model through the model contract alone (`init_state`, `encode`, `log_probs`, `state_layout`), so that every cell,
fused or reference, is looked into the same way. rnnlm/backprop.py derives the same curve by hand for the Elman RNN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rnnlm.errors import DataError, UsageError
from rnnlm.models.contract import LanguageModel, State


@dataclass
class GradientFlow:
    """The mean size of dJ_t/dh_{t-k} for lags k = 1..max_lag (what `rnnlm inspect --json` reports as
    `gradient_flow`).

    J_t = -log p(x_{t+1} | x_1..x_t), the cross-entropy at step t. h_{t-k} is the top layer's hidden state after
    token t-k as the model carries it to step t-k+1 (the state tuple's top "h", the same numbers as `encode`'s
    output in evaluation mode, except with the scan cells' residual layout, whose output is the stream above
    it), each part of the carried state held as its own variable: the gradient flows
    through steps t-k+1..t only, never back into the step that made h_{t-k}. For the LSTM, `cell_norms` is the
    same for the top layer's memory cell c_{t-k} (h_{t-k} held fixed). Norms are Euclidean per position, then
    averaged (arithmetic mean) over the `positions` places t of the text. A bidirectional model is measured
    through its forward stack, the one its `encode` runs.
    """

    lags: list[int]  # 1..max_lag
    norms: list[float]  # mean over positions of ||dJ_t/dh_{t-k}||, one per lag
    cell_norms: list[float] | None  # the same through the LSTM's c; None for cells without one
    positions: int  # how many positions t of the text were averaged

    def to_json(self) -> dict[str, object]:
        """Plain numbers for `--json`: lags, norms, cell_norms (when the cell has c), positions."""
        out: dict[str, object] = {"lags": self.lags, "norms": self.norms, "positions": self.positions}
        if self.cell_norms is not None:
            out["cell_norms"] = self.cell_norms
        return out


def vanishing_lag(lags: list[int], norms: list[float], ratio: float = 1e-3) -> int | None:
    """The first lag whose norm is below `ratio` times the norm at lag 1 (None: not within the lags measured)."""
    if not lags or lags[0] != 1:
        raise UsageError("the gradient-flow curve must start at lag 1")
    floor = ratio * norms[0]
    return next((lag for lag, norm in zip(lags, norms, strict=True) if norm < floor), None)


def window_ends(length: int, max_lag: int, warmup: int, positions: int) -> list[int]:
    """Up to `positions` steps t spread evenly over a text of `length` tokens, each with `max_lag + warmup`
    tokens before it and one after it (its target)."""
    first, last = max_lag + warmup, length - 2
    ends = torch.linspace(first, last, positions, dtype=torch.float64).round().long().unique()
    return [int(t) for t in ends]


def check_text(model: LanguageModel, ids: torch.Tensor, max_lag: int, positions: int) -> None:
    """One clear line for a request that cannot be measured on this text."""
    if max_lag < 1 or positions < 1:
        raise UsageError(f"the gradient flow needs a lag >= 1 and positions >= 1, not {max_lag} and {positions}")
    if ids.dim() != 1:
        raise UsageError(f"the gradient flow reads one stream of token ids, not a tensor of shape {tuple(ids.shape)}")
    if ids.numel() < max_lag + 2:
        raise UsageError(
            f"a lag of {max_lag} needs a text of at least {max_lag + 2} tokens; this one has "
            f"{ids.numel()} (give a longer text or a smaller lag)"
        )
    if int(ids.min()) < 0 or int(ids.max()) >= model.vocab_size:
        raise DataError(f"the text has token ids outside the model's vocabulary of {model.vocab_size}")


def gradient_flow(
    model: LanguageModel, ids: torch.Tensor, max_lag: int = 200, positions: int = 32, warmup: int = 50
) -> GradientFlow:
    """Measure ||dJ_t/dh_{t-k}|| for k = 1..max_lag, averaged over `positions` places t of the text `ids` (N,).

    Each place reads its `warmup` tokens before t - max_lag without gradient (so its state is one real text
    leaves, not zeros; fewer when the text is short), then t - max_lag..t one token at a time, keeping every
    state. The places run side by side as the columns of one batch: their losses are summed, and since no
    column reads another, each column's gradient is its own. The model runs in evaluation mode (no dropout)
    and is put back as it was; no parameter's `.grad` changes.
    """
    ids = ids.to(model.device)
    check_text(model, ids, max_lag, positions)
    warm = max(0, min(warmup, ids.numel() - max_lag - 2))
    ends = window_ends(ids.numel(), max_lag, warm, positions)
    columns = torch.stack([ids[t - max_lag - warm : t + 1] for t in ends], dim=1)  # (warm + max_lag + 1, B)
    targets = ids[torch.tensor(ends, device=ids.device) + 1]  # (B,): x_{t+1}
    was_training = model.training
    model.eval()
    try:
        # cuDNN's RNN backward refuses evaluation mode; torch's own kernels give the same gradients in it
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            norms = _norms(model, columns, targets, warm)
    finally:
        model.train(was_training)
    return GradientFlow(list(range(1, max_lag + 1)), norms["h"], norms.get("c"), len(ends))


def _norms(model: LanguageModel, columns: torch.Tensor, targets: torch.Tensor, warm: int) -> dict[str, list[float]]:
    """Per name of the top layer's state ("h", and "c" for the LSTM): the mean norm of dJ_t/d(state) per lag."""
    layout = model.state_layout
    state = model.init_state(columns.size(1))
    if warm:
        with torch.no_grad():
            _, state = model.encode(columns[:warm], state)
    carried: list[State] = []  # carried[j]: the state token t - max_lag + j is read with
    hidden = torch.empty(0)
    for tokens in columns[warm:]:
        # each part of the state a variable of its own (a fresh node), read only by the next step: a reference
        # cell's c otherwise also reaches J through the h computed from it, a fused kernel's does not
        state = tuple(s.detach().requires_grad_() if not carried else s.clone() for s in state)
        carried.append(state)
        hidden, state = model.encode(tokens.unsqueeze(0), state)  # (1, B, H)
    log_probs = model.log_probs(hidden[-1])  # (B, V): J_t = -log p(x_{t+1}) per column
    loss = -log_probs.gather(1, targets.unsqueeze(1)).sum()
    top, names = len(layout.sizes) - 1, layout.names
    wanted = [part for s in carried[1:][::-1] for part in layout.layer(s, top)]  # lag 1 first: carried[-1] is t-1's
    grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    result: dict[str, list[float]] = {name: [] for name in names}
    for i, grad in enumerate(grads):  # per lag, the top layer's parts in the order of `names`
        result[names[i % len(names)]].append(0.0 if grad is None else float(grad.norm(dim=1).mean()))
    return result
