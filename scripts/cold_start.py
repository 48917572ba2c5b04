"""How well a checkpoint reads the first tokens of a line from a fresh start (issue 18).

For N line starts of the validation split (positions right after a boundary token: a line end, or
<eos> for word models), bits per token at positions 0, 1, 2, 5, 10, 20 after the line start and the
means of the first 10 and 40, from three starting points:

  zero   the zero state, then the boundary token (what every fresh start did before issue 18)
  warm   the zero state, then the preceding `--context` tokens of the split (the boundary included)
  start  the mixture of the checkpoint's start states (what sample / eval / fill start from), then the
         boundary token, as `rnnlm eval` scores a text's first window (rnnlm/warmstart.py)

    RNNLM_DATA=/work/shared/corpora PYTHONPATH=. python3 scripts/cold_start.py runs/shakespeare-char/best.pt

`--variants` adds the single start states tried before the mixture, computed here from the training
split (docs/cold-start.md): the mean state over many line ends (also fitted to them by gradient
descent), the real state nearest that mean, the state after one stretch of text; and mixtures of
16 and 256 states at line ends only.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from rnnlm.checkpoint import load_checkpoint, load_model, save_checkpoint
from rnnlm.data.corpus import load_corpus
from rnnlm.models.lm import RNNLM
from rnnlm.models.stack import State
from rnnlm.warmstart import line_ends, mixture_log_probs, start_states

POSITIONS = (0, 1, 2, 5, 10, 20)
SPAN = 40


def line_starts(ids: np.ndarray, boundary_id: int, count: int, context: int, nonblank: bool = False) -> np.ndarray:
    """`count` evenly spaced positions right after a boundary, with `context` tokens before and SPAN after;
    with `nonblank`, only those of lines that are not empty."""
    ends = np.flatnonzero(ids[:-1] == boundary_id) + 1
    ends = ends[(ends >= context) & (ends + SPAN <= len(ids))]
    if nonblank:
        ends = ends[ids[ends] != boundary_id]
    return ends[np.linspace(0, len(ends) - 1, min(count, len(ends))).round().astype(int)]


def token_bits(model: RNNLM, inputs: torch.Tensor, targets: torch.Tensor, state: State) -> torch.Tensor:
    """Bits of each target (T, B) given inputs (T, B) read from `state`."""
    with torch.inference_mode():
        hidden, _ = model.encode(inputs, state)  # (T, B, H)
        bits = [-model.log_probs(h).gather(1, t.unsqueeze(1)).squeeze(1) / math.log(2)
                for h, t in zip(hidden, targets)]
    return torch.stack(bits)  # (T, B)


def from_state(model: RNNLM, ids: np.ndarray, starts: np.ndarray, boundary_id: int, state: State) -> torch.Tensor:
    """Bits of the SPAN tokens after each start, reading the boundary token first from `state` (1, H) each."""
    block = torch.from_numpy(np.stack([ids[s: s + SPAN] for s in starts], axis=1).astype(np.int64))  # (SPAN, B)
    inputs = torch.cat([torch.full((1, len(starts)), boundary_id), block[:-1]])
    return token_bits(model, inputs, block, tuple(s.expand(len(starts), -1).contiguous() for s in state))


def from_mixture(model: RNNLM, ids: np.ndarray, starts: np.ndarray, boundary_id: int, states: State) -> torch.Tensor:
    """Bits of the SPAN tokens after each start under the mixture of fresh starts from `states` (K, H) each,
    as `rnnlm eval` scores a text's first window."""
    block = torch.from_numpy(np.stack([ids[s: s + SPAN] for s in starts], axis=1).astype(np.int64))  # (SPAN, B)
    inputs = torch.cat([torch.full((1, len(starts)), boundary_id), block[:-1]])
    with torch.inference_mode():
        mixed, _ = mixture_log_probs(model, inputs, block, states)
    return -mixed / math.log(2)


def after_context(model: RNNLM, ids: np.ndarray, starts: np.ndarray, context: int) -> torch.Tensor:
    """Bits of the SPAN tokens after each start, having read the `context` tokens before it from zero."""
    block = torch.from_numpy(np.stack([ids[s - context: s + SPAN] for s in starts], axis=1).astype(np.int64))
    bits = token_bits(model, block[:-1], block[1:], model.init_state(len(starts)))
    return bits[-SPAN:]


def summary(bits: torch.Tensor) -> dict[str, float]:
    mean = bits.double().mean(dim=1)  # (SPAN,) over the line starts
    row = {str(p): float(mean[p]) for p in POSITIONS}
    row.update({"first 10": float(mean[:10].mean()), "first 40": float(mean.mean())})
    return row


def fitted(model: RNNLM, ids: np.ndarray, ends: np.ndarray, init: State, steps: int, span: int = 32,
           lr: float = 0.05) -> State:
    """The state that minimises the mean loss of the first `span` tokens after the line ends `ends`
    (the boundary read first), by full-batch Adam from `init`, the weights frozen."""
    ends = ends[ends + span + 1 <= len(ids)]
    block = torch.from_numpy(np.stack([ids[e: e + span + 1] for e in ends], axis=1).astype(np.int64))
    state = [s.clone().requires_grad_() for s in init]
    optimizer = torch.optim.Adam(state, lr=lr)
    for _ in range(steps):
        batch = tuple(s.expand(len(ends), -1) for s in state)
        hidden, _ = model.encode(block[:-1], batch)
        loss = torch.nn.functional.cross_entropy(model.decoder(hidden).flatten(0, 1), block[1:].flatten())
        optimizer.zero_grad()
        grads = torch.autograd.grad(loss, state)
        for s, g in zip(state, grads):
            s.grad = g
        optimizer.step()
    return tuple(s.detach() for s in state)


def variants(model: RNNLM, train: np.ndarray, boundary_id: int) -> dict[str, State]:
    """Single start states tried before the mixture (docs/cold-start.md)."""
    out = {}
    for blank in (True, False):
        ends = line_ends(train, boundary_id, 256, 128, blank=blank)
        if len(ends):
            many = states_at(model, train, ends, 128)
            mean = tuple(s.mean(0, keepdim=True) for s in many)
            kind = "blank-line" if blank else "line"
            out[f"mean state over {len(ends)} {kind} ends"] = mean
            out[f"mean state over {len(ends)} {kind} ends, fitted 30 steps"] = fitted(model, train, ends, mean, 30)
            distance = sum(((s - m) ** 2).sum(1) for s, m in zip(many, mean))
            nearest = int(distance.argmin())
            out[f"the real state nearest that mean ({kind} ends)"] = tuple(s[nearest: nearest + 1] for s in many)
    out["one stretch of 500 tokens before a line end"] = states_at(
        model, train, line_ends(train, boundary_id, 1, 500, blank=False), 500)
    return out


def states_at(model: RNNLM, ids: np.ndarray, ends: np.ndarray, context: int) -> State:
    """The states (B, H) each after the `context` tokens before one of `ends`."""
    block = torch.from_numpy(np.stack([ids[e - context: e] for e in ends], axis=1).astype(np.int64))
    with torch.inference_mode():
        _, state = model.rnn(model.embed(block), model.init_state(len(ends)))
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--starts", type=int, default=200, help="line starts of the validation split")
    parser.add_argument("--context", type=int, default=500, help="tokens read before a line start for 'warm'")
    parser.add_argument("--nonblank", action="store_true", help="only line starts of lines that are not empty")
    parser.add_argument("--variants", action="store_true", help="also candidate start states from the train split")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write", metavar="OUT",
                        help="for a checkpoint from before issue 18: write a copy to OUT with the start states")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.checkpoint)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.eval()
    splits = ("valid", "train") if args.variants else ("valid",)
    corpus = load_corpus(loaded.config.data, loaded.config.tokenizer, tokenizer, splits=splits)
    ids, boundary = corpus.splits["valid"].ids, tokenizer.boundary_id
    starts = line_starts(ids, boundary, args.starts, args.context, args.nonblank)
    rows = {"zero state, then the boundary": summary(from_state(model, ids, starts, boundary, model.init_state(1))),
            f"after the preceding {args.context} tokens": summary(after_context(model, ids, starts, args.context))}
    states, origin = model.start_states, "the checkpoint's"
    if states is None:  # a checkpoint from before issue 18: the states training would have stored
        train = load_corpus(loaded.config.data, loaded.config.tokenizer, tokenizer, splits=("train",)).splits["train"]
        states, origin = start_states(model, train.ids, boundary), "computed here"
        if args.write:
            save_checkpoint({**load_checkpoint(args.checkpoint), "start_states": states}, args.write)
    rows[f"mixture of {len(states[0])} start states ({origin}), then the boundary"] = summary(
        from_mixture(model, ids, starts, boundary, states))
    if args.variants:
        for name, state in variants(model, corpus.splits["train"].ids, boundary).items():
            rows[f"variant: {name}"] = summary(from_state(model, ids, starts, boundary, state))
        for k in (16, 256):
            many = states_at(model, corpus.splits["train"].ids,
                             line_ends(corpus.splits["train"].ids, boundary, k, 128, blank=False), 128)
            rows[f"variant: mixture of {len(many[0])} line-end states"] = summary(
                from_mixture(model, ids, starts, boundary, many))
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "starts": len(starts), "rows": rows}))
        return
    columns = [*map(str, POSITIONS), "first 10", "first 40"]
    kind = "non-empty line starts" if args.nonblank else "line starts"
    print(f"{args.checkpoint}: {len(starts)} validation {kind}, bits per token")
    print("| start | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
