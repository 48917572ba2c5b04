"""One token stream scored with its whole left context, window after window: what the neural cache, dynamic
evaluation and `rnnlm score` share.

It scores as `evaluate` does with batch size 1 (`rnnlm eval`'s default), so the totals are the same: the
stream is conditioned on a line end before its first token; with a warm start its first `warmstart.SPAN`
tokens are scored under the mixture of the model's K start states (each hypothesis weighted by its
posterior given the tokens before), then it goes on from the start likeliest over them. One stream, not B
columns: a cache or an adapted weight that had read another column would have read text that comes later.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from rnnlm.cache import CacheSettings, NeuralCache
from rnnlm.data.corpus import Split
from rnnlm.dynamic import Adapter, DynamicSettings
from rnnlm.evaluate import EvalResult
from rnnlm.models import LanguageModel
from rnnlm.warmstart import SPAN

LOGITS = 1 << 22  # log-probabilities held at once (T x K x V): 32 MB in float64
WINDOW = 256  # tokens read at once when nothing else bounds it (`rnnlm eval`'s default --bptt)
LN2 = float(np.log(2.0))


class StreamReader:
    """Reads one stream; `read` scores its next tokens given everything read before."""

    def __init__(
        self,
        model: LanguageModel,
        boundary_id: int,
        *,
        start: str = "warm",
        cache: CacheSettings | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        dtype = model.dtype
        states = model.start_states if start == "warm" else None
        if states is not None:  # one hypothesis per start state until the span is read
            self.state = tuple(s.to(device, dtype) for s in states)  # (K, H) each
            self.left = SPAN
        else:
            self.state = model.init_state(1, device)
            self.left = 0
        self.seen = torch.zeros(self.state[0].size(0), dtype=torch.float64, device=device)  # log p_k(tokens read)
        self.previous = torch.tensor([boundary_id], dtype=torch.long, device=device)
        self.cache = NeuralCache(cache) if cache is not None else None

    def window(self, most: int = WINDOW) -> int:
        """How many tokens the next `read` may take: at most `most`, never past the warm start's span, and few
        enough that the log-probabilities of all hypotheses fit in LOGITS numbers."""
        K = self.seen.numel()
        room = max(1, LOGITS // (K * self.model.vocab_size))
        return max(1, min(most, room, self.left if self.left > 0 else most))

    def read(self, targets: torch.Tensor, distributions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p of each of the stream's next tokens `targets` (T,), float64, and with `distributions` the
        whole predicted log-distribution at each (T, V). Differentiable when grad is enabled."""
        T, K = len(targets), self.seen.numel()
        inputs = torch.cat([self.previous, targets[:-1]]).unsqueeze(1).expand(-1, K)  # (T, K)
        hidden, state = self.model.encode(inputs, self.state)  # (T, K, H)
        log_probs = self.model.log_probs(hidden.reshape(T * K, -1)).view(T, K, -1)
        if self.cache is not None:
            scored, mixed_cache = self.cache.mix(hidden, log_probs, targets, distributions)  # (T, K)
            log_probs = mixed_cache if mixed_cache is not None else log_probs
        else:
            scored = log_probs.gather(2, targets.view(T, 1, 1).expand(T, K, 1)).squeeze(2).double()  # (T, K)
        if K == 1:
            token, mixed = scored[:, 0], log_probs[:, 0].double() if distributions else None
        else:  # the mixture of the start states, weighted by p(start k | the tokens before)
            before = self.seen + torch.cat([scored.new_zeros(1, K), scored.cumsum(0)[:-1]])
            weights = torch.log_softmax(before, dim=-1)  # (T, K)
            token = torch.logsumexp(weights + scored, dim=-1)
            mixed = torch.logsumexp(weights.unsqueeze(-1) + log_probs.double(), dim=1) if distributions else None
        self.seen = (self.seen + scored.sum(0)).detach()
        self.state, self.previous = state, targets[-1:]
        self.left -= T
        if K > 1 and self.left <= 0:
            self._keep(int(self.seen.argmax()))
        return token, mixed

    def _keep(self, hypothesis: int) -> None:
        """Go on from the start likeliest over the span, as `evaluate` does."""
        self.state = tuple(s[hypothesis : hypothesis + 1] for s in self.state)
        self.seen = self.seen.new_zeros(1)
        if self.cache is not None:
            self.cache.keep(hypothesis)

    def detach(self) -> None:
        """Cut the graph to everything read so far (after a dynamic-evaluation update)."""
        self.state = tuple(s.detach() for s in self.state)
        if self.cache is not None:
            self.cache.detach()


@dataclass
class Scored:
    ids: np.ndarray  # (T,) the tokens scored
    log_probs: np.ndarray  # (T,) float64, nats
    entropy: np.ndarray | None  # (T,) bits, of the prediction each token was scored under


def windows(chunks: Iterable[np.ndarray], length: Callable[[], int]) -> Iterator[np.ndarray]:
    """The ids of `chunks` (arrays, any sizes) again as windows of `length()` ids, asked before each: where
    the windows fall depends only on the position in the stream, never on how it was chunked."""
    pending = np.zeros(0, dtype=np.int64)
    for chunk in chunks:
        pending = np.concatenate([pending, np.asarray(chunk, dtype=np.int64)])
        while len(pending) >= (size := length()):
            yield pending[:size]
            pending = pending[size:]
    while len(pending):
        size = length()
        yield pending[:size]
        pending = pending[size:]


def entropy_bits(log_distribution: torch.Tensor) -> torch.Tensor:
    """Entropy (T,) in bits of the distributions (T, V) given as log-probabilities."""
    p = log_distribution.exp()
    return -torch.where(p > 0, p * log_distribution, 0.0).sum(-1) / LN2


def score_stream(
    model: LanguageModel,
    chunks: Iterable[np.ndarray],
    *,
    boundary_id: int,
    start: str = "warm",
    cache: CacheSettings | None = None,
    dynamic: DynamicSettings | None = None,
    statistics: dict[str, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    distributions: bool = False,
    window: int = WINDOW,
) -> Iterator[Scored]:
    """Score every id of `chunks` (token ids in arrays of any sizes, read as they come: bounded memory) once,
    with its whole left context; yields window after window. With `dynamic`, a window is a segment and the
    weights (a copy's) take a step on it after it is scored; `statistics` is what its RMS method needs.
    With `distributions`, also the entropy of each prediction; without `dynamic`, `window` tokens are read at
    once (where the windows fall changes no score). The model itself is left as it was."""
    adapter = Adapter(model, dynamic, statistics) if dynamic is not None else None
    scorer = adapter.model if adapter is not None else model
    was_training = scorer.training
    scorer.eval()
    try:
        reader = StreamReader(scorer, boundary_id, start=start, cache=cache, device=device)
        most = dynamic.segment if dynamic is not None else window
        for ids in windows(chunks, lambda: reader.window(most)):
            targets = torch.from_numpy(ids).to(device)
            if adapter is None:
                with torch.inference_mode():
                    token, mixed = reader.read(targets, distributions)
            else:
                with torch.enable_grad(), _no_cudnn(device):
                    token, mixed = reader.read(targets, distributions)
                    adapter.update(-token.sum() / len(token))
                reader.detach()
            entropy = entropy_bits(mixed.detach()).cpu().numpy() if mixed is not None else None
            yield Scored(ids, token.detach().cpu().numpy(), entropy)
    finally:
        scorer.train(was_training)


def evaluate_stream(
    model: LanguageModel,
    split: Split,
    *,
    boundary_id: int,
    start: str = "warm",
    cache: CacheSettings | None = None,
    dynamic: DynamicSettings | None = None,
    statistics: dict[str, torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    block: int = 1 << 20,
    window: int = WINDOW,
) -> EvalResult:
    """`evaluate`'s numbers (batch size 1) for a split scored with the cache and / or dynamic evaluation;
    with neither, the same totals as `evaluate`. The split's ids are read `block` at a time."""
    ids = split.ids
    chunks = (ids[i : i + block] for i in range(0, len(ids), block))
    nll, tokens = 0.0, 0
    for scored in score_stream(
        model,
        chunks,
        boundary_id=boundary_id,
        start=start,
        cache=cache,
        dynamic=dynamic,
        statistics=statistics,
        device=device,
        window=window,
    ):
        nll -= float(scored.log_probs.sum())
        tokens += len(scored.ids)
    return EvalResult(nll, tokens, split.chars, split.bytes)


def _no_cudnn(device: torch.device | str) -> contextlib.AbstractContextManager:
    """cuDNN's recurrent kernels differentiate only in training mode, and scoring runs in eval mode."""
    on_cuda = torch.device(device).type == "cuda"
    return torch.backends.cudnn.flags(enabled=False) if on_cuda else contextlib.nullcontext()
