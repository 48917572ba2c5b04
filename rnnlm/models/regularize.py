"""Regularisers for recurrent language models, each off unless its config key is set.

- locked (variational) dropout: one mask per sequence, shared by every time step (Gal & Ghahramani 2016)
- embedding dropout: drop whole word types from the embedding matrix (Gal & Ghahramani 2016)
- DropConnect on the hidden-to-hidden matrices, "weight drop" (Wan et al. 2013; Merity et al. 2017)
- activation regularisation (AR) and temporal activation regularisation (TAR) (Merity et al. 2017)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dropout(x: torch.Tensor, p: float, training: bool, locked: bool = False) -> torch.Tensor:
    """Dropout on x (T, B, H); `locked` draws one mask per column and reuses it at every step."""
    if not training or p == 0:
        return x
    if not locked:
        return F.dropout(x, p, True)
    mask = x.new_empty(1, *x.shape[1:]).bernoulli_(1 - p) / (1 - p)  # (1, B, H)
    return x * mask


def embedding_dropout(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The embedding matrix with whole rows (word types) zeroed with probability p, the rest rescaled."""
    if not training or p == 0:
        return weight
    mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)  # (V, 1)
    return weight * mask


def drop_connect(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """DropConnect: dropout on a weight matrix's entries, one mask per forward pass (per window)."""
    return F.dropout(weight, p, True) if training and p > 0 else weight


def activation_penalty(raw: torch.Tensor, dropped: torch.Tensor, ar: float, tar: float) -> torch.Tensor:
    """ar * mean(dropped^2) + tar * mean((h_t - h_{t-1})^2) over the top layer's outputs (T, B, H).

    AR keeps activations small; TAR keeps consecutive hidden states close (Merity et al. 2017).
    """
    penalty = raw.new_zeros(())
    if ar:
        penalty = penalty + ar * dropped.pow(2).mean()
    if tar and raw.size(0) > 1:
        penalty = penalty + tar * (raw[1:] - raw[:-1]).pow(2).mean()
    return penalty
