"""Text generation through the model's one-step function: prompt, temperature, top-k, top-p, seed."""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import torch

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.models.bidirectional import BidirectionalLM
from rnnlm.models.lm import RNNLM


def generate(model: RNNLM, tokenizer: Tokenizer, *, prompt: str = "", length: int = 200, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, seed: int = 0,
             device: torch.device | str = "cpu", on_text: Callable[[str], None] | None = None) -> list[str]:
    """Continue `prompt` by `length` tokens, `num_samples` times in one batch; returns the full texts.

    The model first reads a line end and then the prompt, as evaluation conditions the first token.
    `on_text`, if given, receives the first sample's text piece by piece as it is generated.
    The same seed, device and settings give the same text.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    context = [tokenizer.boundary_id, *tokenizer.encode(prompt, partial=True).tolist()]
    decoders = [tokenizer.stream_decoder() for _ in range(num_samples)]
    for piece in decoders:
        for i in context[1:]:
            piece(i)  # bring the decoder's spacing state up to the end of the prompt
    texts = [[prompt] for _ in range(num_samples)]
    if on_text and prompt:
        on_text(prompt)
    pick = functools.partial(choose, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    for drawn in _draw(model, model.prefill, model.step, context, num_samples, length, pick, device):
        for b, token in enumerate(drawn):
            texts[b].append(decoders[b](token))
        if on_text:
            on_text(texts[0][-1])
    return ["".join(t) for t in texts]


def _draw(model: RNNLM, prefill: Callable, step: Callable, context: list[int], num_samples: int, length: int,
          pick: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str) -> Iterator[list[int]]:
    """Read `context` with `prefill`, then yield `length` draws (one id per sample), each fed back by `step`."""
    model.eval()
    with torch.inference_mode():
        tokens = torch.tensor(context, device=device).unsqueeze(1).expand(-1, num_samples)  # (T, B)
        log_probs, state = prefill(tokens, model.init_state(num_samples, device))
        for _ in range(length):
            chosen = pick(log_probs)  # (B,)
            yield chosen.tolist()
            log_probs, state = step(chosen, state)


def choose(log_probs: torch.Tensor, temperature: float, top_k: int, top_p: float,
           generator: torch.Generator) -> torch.Tensor:
    """Pick the next token per row of log_probs (B, V): argmax at temperature 0, else sample."""
    if temperature == 0:
        return log_probs.argmax(dim=-1)
    logits = log_probs / temperature
    if 0 < top_k < logits.size(-1):
        logits, candidates = logits.topk(top_k, dim=-1)  # (B, k), sorted: only k are ranked
        probs = torch.softmax(logits, dim=-1)
    elif top_p < 1.0:
        probs, candidates = _most_likely(torch.softmax(logits, dim=-1), top_p)
    else:
        probs, candidates = torch.softmax(logits, dim=-1), None
    if top_p < 1.0:  # nucleus (Holtzman et al. 2020): the fewest tokens holding mass top_p
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
    picked = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,); needs no renormalising
    return picked if candidates is None else candidates.gather(-1, picked.unsqueeze(-1)).squeeze(-1)


def _most_likely(probs: torch.Tensor, mass: float, first: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely tokens per row, best first, for the smallest k in 64, 512, ... whose tokens
    hold `mass` in every row: (probabilities, ids). A top-k of a few dozen instead of sorting the
    whole vocabulary, unless the distribution is that flat."""
    size, k = probs.size(-1), min(first, probs.size(-1))
    while True:
        top, ids = probs.topk(k, dim=-1)
        if k == size or bool((top.sum(dim=-1) >= mass).all()):
            return top, ids
        k = min(size, k * 8)


def generate_reverse(model: BidirectionalLM, tokenizer: Tokenizer, *, suffix: str, length: int = 200,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_samples: int = 1,
                     seed: int = 0, device: torch.device | str = "cpu") -> list[str]:
    """Generate right to left with the backward stack: `length` tokens that lead up to `suffix`."""
    generator = torch.Generator(device=device).manual_seed(seed)
    context = [*tokenizer.encode(suffix, partial=True).tolist(), tokenizer.boundary_id]  # reading order
    generated: list[list[int]] = [[] for _ in range(num_samples)]
    pick = functools.partial(choose, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
    for drawn in _draw(model, model.prefill_backward, model.step_backward, context, num_samples, length, pick,
                       device):
        for b, token in enumerate(drawn):
            generated[b].append(token)
    return [tokenizer.decode([*reversed(ids), *context[:-1]]) for ids in generated]


def fill_blanks(model: BidirectionalLM, tokenizer: Tokenizer, text: str, *, blank: str = "___", top_k: int = 5,
                device: torch.device | str = "cpu") -> list[list[tuple[str, float]]]:
    """The top-k candidates, with probabilities, for each `blank` in `text` from the infill head.

    Each blank is ranked on its own; the other blanks read as <unk>.
    """
    pieces = text.split(blank)
    encoded = [tokenizer.encode(piece, partial=True).tolist() for piece in pieces]
    rankings = []
    model.eval()
    with torch.inference_mode():
        for i in range(len(pieces) - 1):
            left = [tokenizer.boundary_id] + _joined(encoded[: i + 1], tokenizer.unk_id)
            right = _joined(encoded[i + 1:], tokenizer.unk_id) + [tokenizer.boundary_id]
            log_probs = model.infill_log_probs(torch.tensor(left, device=device), torch.tensor(right, device=device))
            values, ids = log_probs.topk(min(top_k, log_probs.numel()))
            rankings.append([(tokenizer.decode([i]), p) for i, p in zip(ids.tolist(), values.exp().tolist())])
    return rankings


def _joined(parts: list[list[int]], blank_id: int) -> list[int]:
    joined: list[int] = []
    for k, part in enumerate(parts):
        joined += ([blank_id] if k else []) + part
    return joined
