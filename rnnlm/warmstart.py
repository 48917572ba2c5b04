"""Warm start states: how a fresh start (sampling, `fill`, `eval`) begins where the model usually is (issue 18).

Training carries the hidden state from window to window, so the model rarely sees the zero state and
reads its first tokens from it badly. A checkpoint instead keeps K real states of the model, each
just before it reads a line end of the training text (half of them ending a blank line, after which a
paragraph or a document starts), and a fresh start is their mixture, with equal prior weights:

    p(x_1 .. x_n) = 1/K sum_k p(x_1 .. x_n | start from state k, then the line end)

Scoring (`MixtureReader`) reads each column's first SPAN tokens from all K states, across windows,
and scores each token by the mixture (weights: the posterior given the tokens before it), then goes on
from the state likeliest over those SPAN tokens, k*: -log p(x_1 .. x_n) = -log 1/K sum_k p(x_1 .. x_m | k)
- log p(x_m+1 .. x_n | x_1 .. x_m, k*), m = min(n, SPAN), whatever the window length. Sampling draws
a state from the posterior given the prompt. No single state does as well, as it must guess what kind of line
comes (a name, a verse line, a blank line): on the demo model the best one left the first 10 characters
of a line +64% over a reader of the text before, the mixture +7% (docs/cold-start.md). The states come
from the weights alone, in eval mode with no random draws, so training is unchanged and resume stays
bit-exact.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch

from rnnlm.ids import PAD
from rnnlm.models import LanguageModel, State

COUNT = 16  # start states kept: the mixture's components
CONTEXT = 128  # tokens read from the zero state before each of them
MIN_BLANK = 4  # blank lines needed to give half the states to paragraph starts
REACH = 4096  # tokens searched for a line end after each evenly spaced point
COLUMNS = 256  # streams read at once when scoring from every start state
SPAN = 256  # tokens of each column `eval` scores under the mixture, then it goes on from the likeliest start
LOGITS = 1 << 22  # logits computed at once when scoring from every start state (16 MB in float32)


def line_ends(
    ids: np.ndarray, boundary_id: int, count: int, context: int, *, blank: bool, reach: int = REACH
) -> np.ndarray:
    """Up to `count` positions of `boundary_id` in `ids`, spread evenly over it, each with `context` tokens
    before it; with `blank`, only those that end a blank line (a boundary right after a boundary). The
    first one within `reach` tokens of each of `count` evenly spaced points: reads count x reach tokens
    at most, however long `ids` is."""
    found = []
    points = np.linspace(context + 1, len(ids) - 1, count).round().astype(np.int64) if len(ids) > context + 1 else []
    for point in points:
        piece = np.asarray(ids[point - 1 : point + reach]) == boundary_id
        hits = np.flatnonzero(piece[1:] & piece[:-1]) if blank else np.flatnonzero(piece[1:])
        if len(hits):
            found.append(int(point + hits[0]))
    return np.unique(np.array(found, dtype=np.int64))


def start_ends(ids: np.ndarray, boundary_id: int, count: int, context: int) -> np.ndarray:
    """The line ends fresh starts stand for: half of them ending a blank line, where the text has blank
    lines; else (one sentence a line, as in the Penn Treebank) any line end."""
    paragraphs = line_ends(ids, boundary_id, count // 2, context, blank=True)
    if len(paragraphs) < min(MIN_BLANK, count // 2):
        paragraphs = paragraphs[:0]
    lines = line_ends(ids, boundary_id, count - len(paragraphs), context, blank=False)
    return np.concatenate([paragraphs, lines])


def start_states(
    model: LanguageModel, ids: np.ndarray, boundary_id: int, *, count: int = COUNT, context: int = CONTEXT
) -> State | None:
    """The model's states (K, H) per tensor just before it reads each of the line ends `start_ends`
    picks in `ids`, each after the `context` tokens before it; None when `ids` has no line end that far in.

    The same weights and ids give the same states: eval mode (no dropout), no random draws.
    """
    ends = start_ends(ids, boundary_id, count, context)
    if len(ends) == 0:
        return None
    block = np.stack([np.asarray(ids[e - context : e], dtype=np.int64) for e in ends], axis=1)  # (T, K)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _, state = model.encode(torch.from_numpy(block).to(model.device), model.init_state(len(ends)))
    finally:
        model.train(was_training)
    return tuple(s.to("cpu", model.dtype).clone() for s in state)  # (K, H) each


def mixture_log_probs(
    model: LanguageModel, inputs: torch.Tensor, targets: torch.Tensor, states: State
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read inputs (T, B) from each of the K start `states` (K, H); the mixture's log-probability of each
    target (T, B) (0 for PAD), the K parts weighted by their posterior given the targets before it, and
    each column's likeliest start (B,) given the whole window. Call under inference mode, in eval mode."""
    reader = MixtureReader(model, states, inputs.size(1), inputs.device, span=inputs.size(0))
    mixed = reader.read(inputs, targets)
    return mixed, reader.seen.argmax(-1).cpu()


class MixtureReader:
    """B columns read from each of the K start states at once, window after window, for their first
    `span` tokens: what `rnnlm eval` scores under the mixture, whatever its window length (--bptt)."""

    def __init__(
        self, model: LanguageModel, states: State, columns: int, device: torch.device | str, span: int | None = None
    ) -> None:
        self.model, self.K, self.left = model, states[0].size(0), SPAN if span is None else span
        # row b*K + k: column b, start k
        self.state = tuple(s.to(device, model.dtype).repeat(columns, 1) for s in states)
        self.seen = torch.zeros(columns, self.K, dtype=torch.float64, device=device)  # log p_k(tokens read)

    def current(self) -> State:
        """Each column's state (B, H) from the start likeliest given the tokens read so far (the first
        start state before any): a choice that depends on none of the tokens still to come."""
        rows = torch.arange(self.seen.size(0), device=self.seen.device) * self.K + self.seen.argmax(-1)
        return tuple(s[rows] for s in self.state)

    def read(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mixture's log-probability (T, B) of each target (0 for PAD), T <= the span still left; the K
        parts weighted by their posterior given every token before it, those of earlier windows too."""
        assert len(inputs) <= self.left, "read past the mixture's span"
        step = max(1, COLUMNS // self.K)  # B*K columns at once would hold B*K x T x H activations
        parts = [
            self._read(inputs[:, i : i + step], targets[:, i : i + step], slice(i, i + step))
            for i in range(0, inputs.size(1), step)
        ]
        self.left -= len(inputs)
        return torch.cat(parts, dim=1)

    def _read(self, inputs: torch.Tensor, targets: torch.Tensor, columns: slice) -> torch.Tensor:
        K, (T, B) = self.K, inputs.shape
        rows = slice(columns.start * K, columns.start * K + B * K)
        hidden, state = self.model.encode(inputs.repeat_interleave(K, dim=1), tuple(s[rows] for s in self.state))
        for kept, new in zip(self.state, state, strict=True):
            kept[rows] = new.to(kept.dtype)
        wide = targets.repeat_interleave(K, dim=1)  # (T, B*K)
        scored = _token_log_probs(self.model, hidden, wide).masked_fill(wide == PAD, 0.0).view(T, B, K)
        before = self.seen[columns]
        seen = before + torch.cat([scored.new_zeros(1, B, K), scored.cumsum(0)[:-1]])  # log p_k(x_<t)
        self.seen[columns] = before + scored.sum(0)
        mixed = torch.logsumexp(torch.log_softmax(seen, dim=-1) + scored, dim=-1)  # (T, B)
        return mixed.masked_fill(targets == PAD, 0.0)


def _token_log_probs(model: LanguageModel, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) (T, N) in float64 from the top layer's outputs (T, N, H): one softmax over as many
    time steps at once as keep its logits within LOGITS numbers."""
    T, N = targets.shape
    steps = max(1, LOGITS // (N * model.vocab_size))
    flat, wanted = hidden.reshape(T * N, -1), targets.clamp(min=0).reshape(T * N, 1)
    parts = [
        model.log_probs(flat[i : i + steps * N]).gather(1, wanted[i : i + steps * N]).squeeze(1)
        for i in range(0, T * N, steps * N)
    ]
    return torch.cat(parts).double().view(T, N)


def posterior(model: LanguageModel, tokens: list[int], states: State) -> torch.Tensor:
    """log p(start state k | `tokens`), (K,), equal prior weights: how likely each start state makes the
    tokens after the first, read [line end, *tokens] as a fresh start would."""
    K = states[0].size(0)
    if len(tokens) < 2:
        return torch.full((K,), -math.log(K), dtype=torch.float64)
    device = model.device
    context = torch.tensor(tokens, dtype=torch.long, device=device).unsqueeze(1).expand(-1, K)  # (T, K)
    hidden, _ = model.encode(context[:-1], tuple(s.to(device) for s in states))
    pairs = zip(hidden, context[1:], strict=True)
    score = cast(torch.Tensor, sum(model.log_probs(h).gather(1, t.unsqueeze(1)).squeeze(1).double() for h, t in pairs))
    return torch.log_softmax(score.cpu(), dim=0)


def saved_start_states(payload: dict[str, Any], model: LanguageModel) -> State | None:
    """The start states a checkpoint holds for `model`, or None (a checkpoint written before issue 18).

    Raises ValueError when they do not fit the model's state layout.
    """
    saved = payload.get("start_states")
    if saved is None:
        return None
    zero = model.init_state(1, "cpu")
    if (
        not isinstance(saved, (tuple, list))
        or len(saved) != len(zero)
        or any(
            not isinstance(s, torch.Tensor) or s.dim() != 2 or s.shape[1:] != z.shape[1:] or len(s) != len(saved[0])
            for s, z in zip(saved, zero, strict=True)  # lengths are equal: checked just before
        )
    ):
        raise ValueError("its start states do not fit the model's state")
    return tuple(saved)
