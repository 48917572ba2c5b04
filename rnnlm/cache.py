"""The continuous cache of Grave, Joulin & Usunier 2017 ("Improving Neural Language Models with a Continuous
Cache"): the model's prediction mixed with one over the words that followed similar hidden states lately.

With h_t the top layer's output after reading x_t (it predicts x_{t+1}), the cache holds the pairs
(h_i, x_{i+1}) of the last N positions whose next word is known, i = t-N .. t-1, and

    p_cache(w | h_1..t, x_1..t)  ∝  sum_{i = t-N}^{t-1} 1{x_{i+1} = w} exp(theta h_t . h_i)
    p(w | h_t)  =  (1 - lambda) p_model(w | h_t) + lambda p_cache(w | h_1..t, x_1..t)

(the paper's equations 2 and 3). Each pair is stored only after its word x_{i+1} has been scored, so
no prediction sees its own target. The mixture is taken in probability space as a logsumexp of the
two log-probabilities, in float64. Before any pair is stored (a stream's first token) p = p_model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rnnlm.errors import UsageError

TINY = 1e-300  # p_cache of a word the cache lacks, in float64: its log is finite, so no NaN gradient


@dataclass(frozen=True)
class CacheSettings:
    size: int = 2000  # N: pairs kept (the paper: 100 to 2000 on PTB and WikiText)
    theta: float = 0.6  # sharpness of the cache distribution (--tune chose 0.6-1 for ptb-small and shakespeare-char)
    interpolation: float = 0.2  # lambda: the cache's share of the mixture (tuned: 0.2 on both)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise UsageError(f"the cache size must be at least 1 position, not {self.size}")
        if not (math.isfinite(self.theta) and self.theta >= 0):
            raise UsageError(f"the cache theta must be a finite number >= 0, not {self.theta}")
        if not 0 <= self.interpolation < 1:
            raise UsageError(f"the cache lambda must be in [0, 1), not {self.interpolation}")


class NeuralCache:
    """The last `size` pairs (h_i, x_{i+1}) of one stream, read by K hypotheses at once (the warm start's
    K start states, each with its own hidden states over the same words; K = 1 otherwise)."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.keys: torch.Tensor | None = None  # (K, M, H) h_i
        self.words: torch.Tensor | None = None  # (M,) x_{i+1}, the same for every hypothesis

    def mix(
        self, hidden: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor, distributions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mixture's log p (T, K) float64 of each target (T,), and with `distributions` its whole log
        distribution (T, K, V), from the top layer's outputs hidden (T, K, H) and the model's log_probs
        (T, K, V); then stores the T pairs (hidden, targets)."""
        T, K, _ = hidden.shape
        keys, words = hidden.transpose(0, 1), targets  # (K, T, H), (T,)
        if self.keys is not None and self.words is not None:
            keys, words = torch.cat([self.keys, keys], dim=1), torch.cat([self.words, targets])
        M = keys.size(1) - T  # pairs stored before this window
        scores = self.settings.theta * torch.einsum("tkh,kmh->ktm", hidden.double(), keys.double())  # (K, T, M+T)
        query = M + torch.arange(T, device=hidden.device).unsqueeze(1)  # (T, 1) place of h_t among the pairs
        place = torch.arange(M + T, device=hidden.device).unsqueeze(0)  # (1, M+T)
        allowed = (place < query) & (query - place <= self.settings.size)  # pairs whose next word is known
        empty = ~allowed.any(-1, keepdim=True)  # (T, 1): nothing stored yet; its share below is 0
        weights = torch.softmax(scores.masked_fill(~(allowed | empty), -math.inf), dim=-1)  # (K, T, M+T)
        share = torch.where(empty, 0.0, self.settings.interpolation).double()  # (T, 1)
        at_target = (weights * (words.view(1, 1, -1) == targets.view(1, -1, 1))).sum(-1).transpose(0, 1)  # (T, K)
        model_part = log_probs.gather(2, targets.view(T, 1, 1).expand(T, K, 1)).squeeze(2).double()
        token = _interpolate(model_part, at_target, share)
        mixed = None
        if distributions:  # p_cache over the whole vocabulary: T x K x V numbers, only when asked for
            cache = torch.zeros(K, T, log_probs.size(-1), dtype=torch.float64, device=hidden.device)
            cache.scatter_add_(2, words.view(1, 1, -1).expand(K, T, -1), weights)
            mixed = _interpolate(log_probs.double(), cache.transpose(0, 1), share.unsqueeze(-1))
        self.keys, self.words = keys[:, -self.settings.size :], words[-self.settings.size :]
        return token, mixed

    def keep(self, hypothesis: int) -> None:
        """Keep only one hypothesis's hidden states (when the warm start's span is over)."""
        if self.keys is not None:
            self.keys = self.keys[hypothesis : hypothesis + 1]

    def detach(self) -> None:
        """Cut the graph to the stored hidden states (dynamic evaluation, after each segment's update)."""
        if self.keys is not None:
            self.keys = self.keys.detach()


def _interpolate(model_log_probs: torch.Tensor, cache_probs: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """log((1 - share) p_model + share p_cache), as a logsumexp of the two parts' logs."""
    cache_part = torch.log(share) + torch.log(cache_probs.clamp(min=TINY))
    return torch.logaddexp(torch.log1p(-share) + model_log_probs, cache_part)
