"""The recurrent stack: `(T, B, E)` inputs and a state in, `(T, B, H)` outputs and a state out.

A state is always a tuple of `(num_layers, B, H)` tensors: `(h, c)` for the LSTM, `(h,)` otherwise.
The fused stacks are torch's own modules (cuDNN on GPU, oneDNN on CPU), so their parameter names
(`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, ...) are the layout every stack shares.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnlm.config import ModelConfig

State = tuple[torch.Tensor, ...]


class FusedLSTM(nn.LSTM):
    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # type: ignore[override]
        outputs, (h, c) = super().forward(inputs, state)
        return outputs, (h, c)


class FusedGRU(nn.GRU):
    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # type: ignore[override]
        outputs, h = super().forward(inputs, state[0])
        return outputs, (h,)


class FusedRNN(nn.RNN):
    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # type: ignore[override]
        outputs, h = super().forward(inputs, state[0])
        return outputs, (h,)


def build_stack(config: ModelConfig) -> nn.Module:
    """The recurrent stack `config` asks for; dropout between layers as in Zaremba et al. 2014."""
    between = config.dropout if config.num_layers > 1 else 0.0
    common = dict(input_size=config.embed_size, hidden_size=config.hidden_size, num_layers=config.num_layers,
                  dropout=between)
    if config.cell == "lstm":
        return FusedLSTM(**common)
    if config.cell == "gru":
        return FusedGRU(**common)
    return FusedRNN(nonlinearity=config.nonlinearity, **common)


def state_size(cell: str) -> int:
    """How many tensors a state of this cell holds."""
    return 2 if cell == "lstm" else 1
