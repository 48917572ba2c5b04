"""Adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs").

The vocabulary, sorted by frequency, is cut into a head (the most frequent words) and tail clusters
of rarer words. The head scores its words plus one entry per cluster; cluster k scores its own words
from the hidden state projected down to hidden / div^k. Then

    log p(w) = log p_head(w)                                   w in the head
    log p(w) = log p_head(cluster k) + log p_k(w | cluster k)  w in cluster k

a proper distribution over all V words: its perplexity is exact, not an estimate. Training computes
cluster k only for the targets that fall in it, so most tokens (the frequent ones) pay for the head alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.data.batching import PAD
from rnnlm.errors import ConfigError

DEFAULT_CUTOFFS = (2000, 10_000, 50_000)  # each cluster 5x the last; those below the vocabulary are used


def resolve_cutoffs(cutoffs: tuple[int, ...], vocab_size: int) -> list[int]:
    """The configured cutoffs, or the default ones for this vocabulary; ConfigError if one does not fit it."""
    if not cutoffs:
        return [cut for cut in DEFAULT_CUTOFFS if cut < vocab_size]  # none when V <= 2000: the full softmax
    if cutoffs[-1] >= vocab_size:
        raise ConfigError(f"model.cutoffs must be below the vocabulary size, {vocab_size:,} words here "
                          f"(got {list(cutoffs)})")
    return list(cutoffs)


class AdaptiveSoftmax(nn.Module):
    def __init__(self, in_features: int, vocab_size: int, cutoffs: list[int], div_value: float) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.bounds = [*cutoffs, vocab_size]  # cluster k holds ids bounds[k] .. bounds[k + 1] - 1
        self.shortlist = self.bounds[0]
        self.head = nn.Linear(in_features, self.shortlist + len(cutoffs))  # head words, then one per cluster
        self.tail = nn.ModuleList()
        for k in range(len(cutoffs)):
            projected = max(1, int(in_features // div_value ** (k + 1)))  # rarer words, fewer dimensions
            self.tail.append(nn.Sequential(nn.Linear(in_features, projected, bias=False),
                                           nn.Linear(projected, self.bounds[k + 1] - self.bounds[k])))
        self.register_buffer("starts", torch.tensor(cutoffs, dtype=torch.long), persistent=False)

    def reset_parameters(self, init_range: float) -> None:
        """Every weight ~ U(-init_range, init_range), biases zero, as the full decoder."""
        for module in [self.head, *(layer for cluster in self.tail for layer in cluster)]:
            nn.init.uniform_(module.weight, -init_range, init_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of `targets` (N,) given `hidden` (N, H); PAD targets are not scored."""
        scored = targets != PAD
        cluster = torch.bucketize(targets, self.starts, right=True)  # (N,) 0: head, k: tail cluster k - 1
        head_index = torch.where(cluster == 0, targets, self.shortlist + cluster - 1).clamp(min=0)  # PAD -> 0
        log_prob = _log_softmax(self.head(hidden)).gather(1, head_index.unsqueeze(1)).squeeze(1)  # (N,)
        for k, tail in enumerate(self.tail):
            # only the targets in this cluster; with none, the tail still runs on zero rows, so its
            # parameters get (zero) gradients every step, as DistributedDataParallel expects
            rows = ((cluster == k + 1) & scored).nonzero().squeeze(1)
            within = (targets[rows] - self.bounds[k]).unsqueeze(1)
            log_prob = log_prob.index_add(0, rows, _log_softmax(tail(hidden[rows])).gather(1, within).squeeze(1))
        return -log_prob.masked_fill(~scored, 0.0).sum()

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, V) of every word given `hidden` (N, H)."""
        head = _log_softmax(self.head(hidden))  # (N, shortlist + clusters)
        parts = [head[:, : self.shortlist]]
        for k, tail in enumerate(self.tail):
            parts.append(_log_softmax(tail(hidden)) + head[:, self.shortlist + k: self.shortlist + k + 1])
        return torch.cat(parts, dim=1)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """In float32 at least, as the full softmax's loss: half precision would round the normaliser."""
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
