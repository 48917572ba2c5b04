"""The recurrent stack: `(T, B, E)` inputs and a state in, `(T, B, H)` outputs and a state out.

A state is a flat tuple of per-layer tensors, `(h_0, c_0, h_1, c_1, ...)` for the LSTM and
`(h_0, h_1, ...)` otherwise, each `(B, H_k)`, as the stack's `layout` says: layers may differ in size
(AWD-LSTM's top layer matches the embedding so that weights can be tied). Every stack names its parameters as torch's
fused modules do (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, ...), so a
checkpoint runs on any of them:

- `FusedLSTM` / `FusedGRU` / `FusedRNN`: torch's multi-layer kernel in one call (cuDNN, oneDNN);
  equal layer sizes; DropConnect by lending the kernel dropped weights.
- `KernelStack`: the same kernel layer by layer, for unequal sizes or locked dropout between layers.
- `ReferenceStack`: the cells of `models/cells.py`, step by step in Python: readable, slower.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from rnnlm.config import ModelConfig
from rnnlm.models.cells import Cell, LayerWeights, StackStepper, make_cell
from rnnlm.models.contract import State, StateLayout
from rnnlm.models.mincells import MIN_CELLS, MinStack
from rnnlm.models.regularize import drop_connect, dropout

KERNELS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def layer_sizes(config: ModelConfig) -> list[int]:
    """Input size, then each layer's hidden size (the top one may be `model.output_size`)."""
    top = config.output_size or config.hidden_size
    return [config.embed_size, *[config.hidden_size] * (config.num_layers - 1), top]


if TYPE_CHECKING:  # FusedStack is only ever mixed into nn.LSTM, nn.GRU or nn.RNN, whose attributes it uses
    _KernelModule = nn.RNNBase
else:
    _KernelModule = object


class FusedStack(_KernelModule):
    """Torch's multi-layer kernel, wrapped to the stack interface; layers all one size."""

    cell_name = "lstm"
    weight_drop = 0.0

    def configure(self, between: float, weight_drop: float) -> None:
        self.weight_drop = weight_drop
        self.dropout = between  # the kernel's own dropout between layers

    @functools.cached_property
    def cell(self) -> Cell:
        return make_cell(self.cell_name, getattr(self, "nonlinearity", "tanh"))  # nn.RNN's; the others have none

    @functools.cached_property
    def layout(self) -> StateLayout:
        return StateLayout(self.cell.state_names, (self.hidden_size,) * self.num_layers)

    def layer(self, k: int) -> LayerWeights:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return LayerWeights(*(getattr(self, f"{name}_l{k}") for name in names))

    def stepper(self, exact: torch.dtype, dtype: torch.dtype | None = None) -> StackStepper:
        layers = [self.layer(k) for k in range(self.num_layers)]
        return StackStepper(self.cell, layers, exact, dtype)

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> State:
        return self.layout.zeros(batch_size, device, dtype)

    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        layout = self.layout
        n = layout.per_layer
        hx = tuple(torch.stack(layout.by_name(state, name)) for name in layout.names)  # (L, B, H) each, for the kernel
        kernel = KERNELS[self.cell_name]
        if self.training and self.weight_drop > 0:
            flat = cast("list[torch.Tensor]", self._flat_weights)  # typed Optional by torch; every named weight exists
            weights = [
                drop_connect(w, self.weight_drop, True) if name.startswith("weight_hh") else w
                for name, w in zip(self._flat_weights_names, flat, strict=True)
            ]
            outputs, final = _call_with_weights(kernel, self, weights, inputs, hx if n == 2 else hx[0])
        else:
            outputs, final = kernel.forward(self, inputs, hx if n == 2 else hx[0])
        final = final if n == 2 else (final,)
        return outputs, tuple(t for layer in zip(*(f.unbind(0) for f in final), strict=True) for t in layer)


class FusedLSTM(FusedStack, nn.LSTM):  # type: ignore[misc]  # forward: the stack interface's, not nn.LSTM's
    cell_name = "lstm"


class FusedGRU(FusedStack, nn.GRU):  # type: ignore[misc]  # forward: the stack interface's, not nn.GRU's
    cell_name = "gru"


class FusedRNN(FusedStack, nn.RNN):  # type: ignore[misc]  # forward: the stack interface's, not nn.RNN's
    cell_name = "rnn"


def _call_with_weights(
    kernel: type[nn.RNNBase], module: nn.RNNBase, weights: list[torch.Tensor], inputs: torch.Tensor, hx: object
) -> tuple[torch.Tensor, Any]:
    """Run torch's recurrent kernel on `module` with `weights` in place of its own, then put them back."""
    saved = module._flat_weights
    module.__dict__["_flat_weights"] = weights
    try:
        return kernel.forward(module, inputs, hx)
    finally:
        module.__dict__["_flat_weights"] = saved


class LayerStack(nn.Module):
    """Layers run one at a time: sizes may differ, dropout between layers may be locked."""

    def __init__(
        self,
        cell: str,
        sizes: list[int],
        nonlinearity: str = "tanh",
        between: float = 0.0,
        locked: bool = False,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.cell_name, self.nonlinearity, self.sizes = cell, nonlinearity, sizes
        self.cell = make_cell(cell, nonlinearity)
        self.layout = StateLayout(self.cell.state_names, tuple(sizes[1:]))
        self.num_layers = len(sizes) - 1
        self.between, self.locked, self.weight_drop = between, locked, weight_drop
        gates = self.cell.gate_count
        for k, (columns, hidden) in enumerate(itertools.pairwise(sizes)):
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(gates * hidden, columns)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(gates * hidden, hidden)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(gates * hidden)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(gates * hidden)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for k in range(self.num_layers):  # torch's own initialisation, per layer size
            bound = 1.0 / math.sqrt(self.sizes[k + 1])
            for w in self.layer(k).all():
                nn.init.uniform_(w, -bound, bound)

    def layer(self, k: int) -> LayerWeights:
        return LayerWeights(
            getattr(self, f"weight_ih_l{k}"),
            getattr(self, f"weight_hh_l{k}"),
            getattr(self, f"bias_ih_l{k}"),
            getattr(self, f"bias_hh_l{k}"),
        )

    def stepper(self, exact: torch.dtype, dtype: torch.dtype | None = None) -> StackStepper:
        return StackStepper(self.cell, [self.layer(k) for k in range(self.num_layers)], exact, dtype)

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> State:
        return self.layout.zeros(batch_size, device, dtype)

    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        layer_input = inputs  # (T, B, I)
        final: list[torch.Tensor] = []
        for k in range(self.num_layers):
            weights = self.layer(k)
            weights.weight_hh = drop_connect(weights.weight_hh, self.weight_drop, self.training)
            layer_input, layer_state = self.run_layer(k, layer_input, self.layout.layer(state, k), weights)
            if k < self.num_layers - 1:
                layer_input = dropout(layer_input, self.between, self.training, self.locked)
            final.extend(layer_state)
        return layer_input, tuple(final)  # (T, B, H_top)

    def run_layer(
        self, k: int, inputs: torch.Tensor, state: State, weights: LayerWeights
    ) -> tuple[torch.Tensor, State]:
        raise NotImplementedError


class ReferenceStack(LayerStack):
    """The cells of `models/cells.py` applied one time step at a time."""

    def run_layer(
        self, k: int, inputs: torch.Tensor, state: State, weights: LayerWeights
    ) -> tuple[torch.Tensor, State]:
        outputs = []
        for x_t in inputs:  # x_t (B, I)
            state = self.cell(x_t, state, weights)
            outputs.append(state[0])
        return torch.stack(outputs), state


class KernelStack(LayerStack):
    """Torch's fused kernel applied one layer at a time, lent each layer's weights."""

    def run_layer(
        self, k: int, inputs: torch.Tensor, state: State, weights: LayerWeights
    ) -> tuple[torch.Tensor, State]:
        kernel = KERNELS[self.cell_name]
        template = self._template(k)
        hx = tuple(s.unsqueeze(0) for s in state)  # (1, B, H) each
        outputs, final = _call_with_weights(
            kernel, template, list(weights.all()), inputs, hx if len(hx) == 2 else hx[0]
        )
        final = final if len(hx) == 2 else (final,)
        return outputs, tuple(f[0] for f in final)

    def _template(self, k: int) -> nn.RNNBase:
        """A parameter-less one-layer module of layer k's shapes, run only with lent weights."""
        templates = self.__dict__.setdefault("_templates", {})
        shape = (self.sizes[k], self.sizes[k + 1])
        if shape not in templates:
            extra = {"nonlinearity": self.nonlinearity} if self.cell_name == "rnn" else {}
            kernel = cast("Callable[..., nn.RNNBase]", KERNELS[self.cell_name])  # nn.LSTM's arguments, not RNNBase's
            templates[shape] = kernel(*shape, 1, device="meta", **extra)
        templates[shape].train(self.training)
        return templates[shape]


RecurrentStack = FusedLSTM | FusedGRU | FusedRNN | LayerStack | MinStack


def build_stack(config: ModelConfig) -> RecurrentStack:
    """The recurrent stack `config` asks for, with its dropout between layers and weight drop."""
    between = config.dropouts()[1] if config.num_layers > 1 else 0.0
    sizes = layer_sizes(config)
    per_layer: dict[str, Any] = dict(
        nonlinearity=config.nonlinearity, between=between, locked=config.locked_dropout, weight_drop=config.weight_drop
    )
    if config.cell in MIN_CELLS:  # models/mincells.py: their own scan, no recurrent weights to drop
        scan = config.impl == "fused"
        return MinStack(
            config.cell,
            sizes,
            config.min_activation,
            scan,
            between,
            config.locked_dropout,
            residual=config.min_residual,
            norm=config.min_norm,
            mlp=config.min_mlp,
        )
    if config.impl == "reference":
        return ReferenceStack(config.cell, sizes, **per_layer)
    if len(set(sizes[1:])) > 1 or (config.locked_dropout and between > 0):
        return KernelStack(config.cell, sizes, **per_layer)
    fused = {"lstm": FusedLSTM, "gru": FusedGRU, "rnn": FusedRNN}[config.cell]
    extra = {"nonlinearity": config.nonlinearity} if config.cell == "rnn" else {}
    stack = fused(config.embed_size, config.hidden_size, config.num_layers, **extra)
    stack.configure(between, config.weight_drop)
    return stack
