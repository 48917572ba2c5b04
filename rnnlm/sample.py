"""Text generation through the model's one-step function: prompt, temperature, top-k, top-p, seed."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch

from rnnlm.data.tokenizers import Tokenizer
from rnnlm.models import BidirectionalLM, LanguageModel, State
from rnnlm.models.contract import Drawer
from rnnlm.warmstart import posterior


def generate(
    model: LanguageModel,
    tokenizer: Tokenizer,
    *,
    prompt: str = "",
    length: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_text: Callable[[str], None] | None = None,
    weights: torch.dtype | None = None,
    start: str = "warm",
) -> list[str]:
    """Continue `prompt` by `length` tokens, `num_samples` times in one batch; returns the full texts.

    The model first reads a line end and then the prompt, as evaluation conditions the first token,
    from a fresh start (`start` "warm": see `fresh_state`; "zero": the zero state).
    `on_text`, if given, receives the first sample's text piece by piece as it is generated.
    Each token after the prompt is drawn through `model.stepper(weights)`, the fast one-step function;
    `weights` torch.bfloat16 generates with a bf16 copy of the weights (half the bytes read per token).
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
    uniforms = Uniforms(generator, num_samples)
    state = fresh_state(
        model, context, num_samples, greedy=temperature == 0, generator=generator, device=device, warm=start == "warm"
    )
    stepper = model.stepper(weights)
    native = stepper.generator()
    if native is not None:
        settings = (temperature, top_k, top_p)
        draws = _draw_native(model, native, context, state, length, settings, uniforms)
    else:
        pick = functools.partial(choose, temperature=temperature, top_k=top_k, top_p=top_p, generator=uniforms)
        step = functools.partial(stepper, normalized=False)  # logits: the sampler normalises them
        draws = _draw(model, model.prefill, step, context, state, length, pick, device)
    for drawn in draws:
        for b, token in enumerate(drawn):
            texts[b].append(decoders[b](token))
        if on_text:
            on_text(texts[0][-1])
    return ["".join(t) for t in texts]


def fresh_state(
    model: LanguageModel,
    context: list[int],
    num_samples: int,
    *,
    greedy: bool,
    generator: torch.Generator,
    device: torch.device | str,
    warm: bool = True,
) -> State:
    """Each sample's state before it reads `context` (a line end first): one of the model's start states
    (rnnlm/warmstart.py), drawn from their posterior given the context (its likeliest when `greedy`), which
    samples from their mixture; zeros when not `warm` or the model has none (checkpoints before them)."""
    states = model.start_states if warm else None
    if states is None:
        return model.init_state(num_samples, device)
    model.eval()
    with torch.inference_mode():
        log_posterior = posterior(model, context, states)  # (K,)
        if greedy:
            chosen = log_posterior.argmax().expand(num_samples)
        else:
            weights = log_posterior.exp().float().to(generator.device)
            chosen = torch.multinomial(weights, num_samples, replacement=True, generator=generator).cpu()
    return tuple(s[chosen].to(device, model.dtype) for s in states)


def _draw(
    model: LanguageModel,
    prefill: Callable,
    step: Callable,
    context: list[int],
    state: State,
    length: int,
    pick: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str,
) -> Iterator[list[int]]:
    """Read `context` with `prefill` from `state` (one row per sample), then yield `length` draws (one id
    per sample), each fed back by `step`."""
    model.eval()
    with torch.inference_mode():
        tokens = torch.tensor(context, device=device).unsqueeze(1).expand(-1, state[0].size(0))  # (T, B)
        log_probs, state = prefill(tokens, state)
        for _ in range(length):
            chosen = pick(log_probs)  # (B,)
            yield chosen.tolist()
            log_probs, state = step(chosen, state)


def _draw_native(
    model: LanguageModel,
    native: Drawer,
    context: list[int],
    state: State,
    length: int,
    settings: tuple[float, int, float],
    uniforms: Uniforms,
) -> Iterator[list[int]]:
    """`_draw` with `choose`'s draw in C: `model.prefill` reads all of `context` but its last token, then
    the generator reads that and draws a block of tokens per call from the distribution `choose` draws
    from (`settings`: temperature, top_k, top_p), each with the very uniform draw `choose` would take for
    it (temperature 0: the argmax), so the text is the one `_draw` gives up to the rounding of the products."""
    temperature, top_k, top_p = settings
    model.eval()
    with torch.inference_mode():
        tokens = torch.tensor(context).unsqueeze(1).expand(-1, state[0].size(0))  # (T, B)
        if len(context) > 1:
            _, state = model.prefill(tokens[:-1].to(model.device), state)
        last = tokens[-1]
        for start in range(0, length, uniforms.block):
            count = min(uniforms.block, length - start)
            block = uniforms.next_block() if temperature > 0 else None
            drawn, state = native(last, state, count, temperature, block, top_k, top_p)
            yield from drawn.tolist()
            last = drawn[-1]


class Uniforms:
    """Uniform draws in [0, 1), `rows` at a time (one per sample), taken from `generator` for `block` calls at
    once: one call to the generator instead of one per token. On a CPU these are the very numbers, in the same
    order, that drawing `rows` at each call gives (torch fills a tensor from its generator in order), so a
    seed gives the same text as drawing token by token, and a shorter text is the start of a longer one."""

    def __init__(self, generator: torch.Generator, rows: int, block: int = 64) -> None:
        self.generator, self.rows, self.block = generator, rows, block
        self.drawn: list[torch.Tensor] = []  # the block's remaining draws, (rows, 1) each, the next one last

    def __call__(self, rows: int) -> torch.Tensor:
        """The next `rows` draws, (rows, 1) float64; `rows` is always the one given at construction."""
        if rows != self.rows:
            raise ValueError(f"drawing {rows} rows from uniforms made for {self.rows}")
        if not self.drawn:  # drawn only when first needed: whatever else the generator draws comes first
            self.drawn = list(self.next_block().unbind(0))[::-1]
        return self.drawn.pop()

    def next_block(self) -> torch.Tensor:
        """The next `block` draws at once, (block, rows, 1): what `block` calls would return one by one."""
        return torch.rand(
            self.block, self.rows, 1, generator=self.generator, device=self.generator.device, dtype=torch.float64
        )


def choose(
    log_probs: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | Uniforms
) -> torch.Tensor:
    """Pick the next token per row of log_probs (B, V): argmax at temperature 0, else draw from `distribution`."""
    if temperature == 0:
        return log_probs.argmax(dim=-1)
    probs, candidates = distribution(log_probs, temperature, top_k, top_p)
    picked = _inverse_cdf(probs, generator)
    return picked if candidates is None else candidates.gather(-1, picked.unsqueeze(-1)).squeeze(-1)


def distribution(
    log_probs: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What `choose` draws from at a temperature above 0: softmax(log_probs / temperature) over each row
    (B, V), restricted to the top_k likeliest tokens and then to the top_p nucleus, as (weights, the token
    ids they are for or None for all V); the weights are proportional to the probabilities, the restricted
    ones not renormalised. The rows may be log-probabilities up to a constant per row (logits): the
    distribution is the same."""
    logits = log_probs if temperature == 1.0 else log_probs / temperature  # dividing by 1 changes nothing
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
    return probs, candidates


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | Uniforms) -> torch.Tensor:
    """One id per row of `probs` (B, V), drawn with probability proportional to its entry (the rows need
    not sum to 1): the first id whose running sum exceeds a uniform draw below the total. The same law as
    torch.multinomial, which draws V exponential variates per row (as long as the rest of a step takes
    at 10,000 words: docs/benchmarks.md). The running sum is in float64: in float32, once it passes 0.5 a word
    rarer than 3e-8 would add nothing to it and never be drawn, and the rare words come last."""
    running = probs.cumsum(dim=-1, dtype=torch.float64)
    if isinstance(generator, Uniforms):
        point = generator(probs.size(0)) * running[:, -1:]
    else:
        point = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=torch.float64)
        point *= running[:, -1:]
    return torch.searchsorted(running, point, right=True).clamp_(max=probs.size(-1) - 1).squeeze(-1)  # (B,)


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


def generate_reverse(
    model: BidirectionalLM,
    tokenizer: Tokenizer,
    *,
    suffix: str,
    length: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[str]:
    """Generate right to left with the backward stack: `length` tokens that lead up to `suffix`.

    The backward stack starts from the zero state: training reads every window of it from there.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    context = [*tokenizer.encode(suffix, partial=True).tolist(), tokenizer.boundary_id]  # reading order
    generated: list[list[int]] = [[] for _ in range(num_samples)]
    uniforms = Uniforms(generator, num_samples)
    pick = functools.partial(choose, temperature=temperature, top_k=top_k, top_p=top_p, generator=uniforms)
    state = model.init_state(num_samples, device)
    for drawn in _draw(model, model.prefill_backward, model.step_backward, context, state, length, pick, device):
        for b, token in enumerate(drawn):
            generated[b].append(token)
    return [tokenizer.decode([*reversed(ids), *context[:-1]]) for ids in generated]


def fill_blanks(
    model: BidirectionalLM,
    tokenizer: Tokenizer,
    text: str,
    *,
    blank: str = "___",
    top_k: int = 5,
    device: torch.device | str = "cpu",
    start: str = "warm",
) -> list[list[tuple[str, float]]]:
    """The top-k candidates, with probabilities, for each `blank` in `text` from the infill head.

    Each blank is ranked on its own; the other blanks read as <unk>. The forward stack reads the left
    context from the start state likeliest to precede it (`start` "warm") or from zeros ("zero").
    """
    pieces = text.split(blank)
    encoded = [tokenizer.encode(piece, partial=True).tolist() for piece in pieces]
    rankings = []
    model.eval()
    with torch.inference_mode():
        for i in range(len(pieces) - 1):
            left = [tokenizer.boundary_id] + _joined(encoded[: i + 1], tokenizer.unk_id)
            right = _joined(encoded[i + 1 :], tokenizer.unk_id) + [tokenizer.boundary_id]
            state = fresh_state(
                model, left, 1, greedy=True, generator=torch.Generator(), device=device, warm=start == "warm"
            )
            log_probs = model.infill_log_probs(
                torch.tensor(left, device=device), torch.tensor(right, device=device), state
            )
            values, ids = log_probs.topk(min(top_k, log_probs.numel()))
            pairs = zip(ids.tolist(), values.exp().tolist(), strict=True)
            rankings.append([(tokenizer.decode([i]), p) for i, p in pairs])
    return rankings


def _joined(parts: list[list[int]], blank_id: int) -> list[int]:
    joined: list[int] = []
    for k, part in enumerate(parts):
        joined += ([blank_id] if k else []) + part
    return joined
