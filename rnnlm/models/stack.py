"""The recurrent stack: `(T, B, E)` inputs and a state in, `(T, B, H)` outputs and a state out.

A state is always a tuple of `(num_layers, B, H)` tensors: `(h, c)` for the LSTM, `(h,)` otherwise.
The fused stacks are torch's own modules (cuDNN on GPU, oneDNN on CPU), so their parameter names
(`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, ...) are the layout every stack shares.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.config import ModelConfig
from rnnlm.models.cells import LayerWeights, make_cell

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


class ReferenceStack(nn.Module):
    """The cells of `models/cells.py` run step by step in Python: readable, and slower.

    Same parameters, names and shapes as the fused module for the same settings, and the same
    dropout placement (on each layer's output but the last), so checkpoints move between the two.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0,
                 nonlinearity: str = "tanh") -> None:
        super().__init__()
        self.cell = make_cell(cell, nonlinearity)
        self.hidden_size, self.num_layers, self.dropout = hidden_size, num_layers, dropout
        rows = self.cell.gate_count * hidden_size
        for layer in range(num_layers):
            columns = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(rows, columns)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(rows, hidden_size)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(rows)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(rows)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # torch's own initialisation for these modules
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def layer(self, k: int) -> LayerWeights:
        return LayerWeights(getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}"),
                            getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}"))

    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        layer_input = inputs  # (T, B, I)
        final: list[State] = []
        for k in range(self.num_layers):
            weights, s = self.layer(k), tuple(part[k] for part in state)  # s: (B, H) each
            outputs = []
            for x_t in layer_input:
                s = self.cell(x_t, s, weights)
                outputs.append(s[0])
            layer_input = torch.stack(outputs)  # (T, B, H)
            if k < self.num_layers - 1 and self.dropout > 0:
                layer_input = F.dropout(layer_input, self.dropout, self.training)
            final.append(s)
        return layer_input, tuple(torch.stack(parts) for parts in zip(*final))


def build_stack(config: ModelConfig) -> nn.Module:
    """The recurrent stack `config` asks for; dropout between layers as in Zaremba et al. 2014."""
    between = config.dropout if config.num_layers > 1 else 0.0
    if config.impl == "reference":
        return ReferenceStack(config.cell, config.embed_size, config.hidden_size, config.num_layers, between,
                              config.nonlinearity)
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
