"""The recurrent stack: `(T, B, E)` inputs and a state in, `(T, B, H)` outputs and a state out.

A state is always a tuple of `(num_layers, B, H)` tensors: `(h, c)` for the LSTM, `(h,)` otherwise.
The fused stacks are torch's own modules (cuDNN on GPU, oneDNN on CPU), so their parameter names
(`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, ...) are the layout every stack shares.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnlm.config import ModelConfig
from rnnlm.models.cells import LayerWeights, make_cell
from rnnlm.models.regularize import drop_connect, dropout

State = tuple[torch.Tensor, ...]


class FusedStack:
    """What the fused modules share: torch's kernel on the fast path, and a slower path for
    DropConnect on the recurrent weights and locked dropout between layers, which the kernel
    cannot do itself; that path calls the same kernel with substituted weights, layer by layer."""

    between = 0.0  # dropout between layers
    locked = False
    weight_drop = 0.0

    def configure(self, between: float, locked: bool, weight_drop: float) -> None:
        self.between, self.locked, self.weight_drop = between, locked, weight_drop
        self.dropout = 0.0 if locked else between  # the kernel's own (unlocked) dropout between layers

    def run(self, inputs: torch.Tensor, hx: object) -> tuple[torch.Tensor, object]:
        kernel = type(self).__mro__[2]  # nn.LSTM, nn.GRU or nn.RNN
        if not self.training or (self.weight_drop == 0 and not (self.locked and self.between > 0)):
            return kernel.forward(self, inputs, hx)
        names, flat = self._flat_weights_names, self._flat_weights  # type: ignore[attr-defined]
        weights = [drop_connect(w, self.weight_drop, True) if n.startswith("weight_hh") else w
                   for n, w in zip(names, flat)]
        if not (self.locked and self.between > 0):
            return _call_with_weights(kernel, self, weights, inputs, hx)
        per_layer = len(weights) // self.num_layers  # type: ignore[attr-defined]
        finals, layer_input = [], inputs
        for k in range(self.num_layers):  # type: ignore[attr-defined]
            layer_hx = tuple(h[k: k + 1] for h in hx) if isinstance(hx, tuple) else hx[k: k + 1]  # type: ignore
            layer_input, final = _call_with_weights(kernel, self.template(k), weights[k * per_layer:
                                                    (k + 1) * per_layer], layer_input, layer_hx)
            if k < self.num_layers - 1:  # type: ignore[attr-defined]
                layer_input = dropout(layer_input, self.between, True, locked=True)
            finals.append(final)
        if isinstance(hx, tuple):
            return layer_input, tuple(torch.cat(parts) for parts in zip(*finals))
        return layer_input, torch.cat(finals)

    def template(self, k: int) -> nn.Module:
        """A one-layer module of the same kind with layer k's shapes; it only ever runs borrowed weights."""
        templates = self.__dict__.setdefault("_templates", {})
        key = min(k, 1)
        if key not in templates:
            size = self.input_size if k == 0 else self.hidden_size  # type: ignore[attr-defined]
            extra = {"nonlinearity": self.nonlinearity} if isinstance(self, nn.RNN) else {}  # type: ignore
            templates[key] = type(self).__mro__[2](size, self.hidden_size, 1, device="meta", **extra)  # type: ignore
        return templates[key]


def _call_with_weights(kernel: type, module: nn.Module, weights: list[torch.Tensor], inputs: torch.Tensor,
                       hx: object) -> tuple[torch.Tensor, object]:
    """Run torch's recurrent kernel on `module` with `weights` in place of its own, then put them back."""
    saved = module._flat_weights  # type: ignore[attr-defined]
    module.__dict__["_flat_weights"] = weights
    module.train()
    try:
        return kernel.forward(module, inputs, hx)
    finally:
        module.__dict__["_flat_weights"] = saved


class FusedLSTM(FusedStack, nn.LSTM):
    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # type: ignore[override]
        outputs, (h, c) = self.run(inputs, state)
        return outputs, (h, c)


class FusedGRU(FusedStack, nn.GRU):
    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # type: ignore[override]
        outputs, h = self.run(inputs, state[0])
        return outputs, (h,)


class FusedRNN(FusedStack, nn.RNN):
    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:  # type: ignore[override]
        outputs, h = self.run(inputs, state[0])
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
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.configure(dropout, False, 0.0)
        rows = self.cell.gate_count * hidden_size
        for layer in range(num_layers):
            columns = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(rows, columns)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(rows, hidden_size)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(rows)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(rows)))
        self.reset_parameters()

    def configure(self, between: float, locked: bool, weight_drop: float) -> None:
        self.between, self.locked, self.weight_drop = between, locked, weight_drop

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
            weights.weight_hh = drop_connect(weights.weight_hh, self.weight_drop, self.training)
            outputs = []
            for x_t in layer_input:
                s = self.cell(x_t, s, weights)
                outputs.append(s[0])
            layer_input = torch.stack(outputs)  # (T, B, H)
            if k < self.num_layers - 1:
                layer_input = dropout(layer_input, self.between, self.training, self.locked)
            final.append(s)
        return layer_input, tuple(torch.stack(parts) for parts in zip(*final))


def build_stack(config: ModelConfig) -> nn.Module:
    """The recurrent stack `config` asks for, with its dropout between layers and weight drop."""
    between = config.dropouts()[1] if config.num_layers > 1 else 0.0
    if config.impl == "reference":
        stack = ReferenceStack(config.cell, config.embed_size, config.hidden_size, config.num_layers,
                               nonlinearity=config.nonlinearity)
    elif config.cell == "lstm":
        stack = FusedLSTM(config.embed_size, config.hidden_size, config.num_layers)
    elif config.cell == "gru":
        stack = FusedGRU(config.embed_size, config.hidden_size, config.num_layers)
    else:
        stack = FusedRNN(config.embed_size, config.hidden_size, config.num_layers, nonlinearity=config.nonlinearity)
    stack.configure(between, config.locked_dropout, config.weight_drop)
    return stack


def state_size(cell: str) -> int:
    """How many tensors a state of this cell holds."""
    return 2 if cell == "lstm" else 1
