"""The lecture's recurrent cells, one small class each, written from its equations (plus biases).

A cell holds no parameters: it is handed one layer's weights in torch's own layout, so a stack
of these cells loads the very state_dict of the fused kernels (`nn.RNN`, `nn.GRU`, `nn.LSTM`):
`weight_ih` stacks the input matrices W of every gate, `weight_hh` the recurrent matrices U,
each with a bias (`bias_ih`, `bias_hh`). Gate order is torch's: GRU (r, z, n), LSTM (i, f, g, o).
Shapes: x_t (B, I), h_{t-1} and c_{t-1} (B, H).

Each cell's equations are written once, in `equations`, from the gates' pre-activations, and reached two
ways: `cell(x, state, weights)` (the reference stack: plain products, differentiable) and
`cell.step(x, state, packed, dtype)` (generation: one product per layer on weights `cell.pack` laid out
for it). Both return the state; `gates`/`step` return every intermediate (a NamedTuple), for recording.
`StackStepper` runs `step` through a whole stack.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from rnnlm.models.contract import State
from rnnlm.models.mincells import MinGRUGates, MinLSTMGates

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


@dataclass
class LayerWeights:
    weight_ih: torch.Tensor  # (G*H, I): the W matrices of the G gates, stacked
    weight_hh: torch.Tensor  # (G*H, H): the U matrices
    bias_ih: torch.Tensor  # (G*H,)
    bias_hh: torch.Tensor  # (G*H,)

    def all(self) -> tuple[torch.Tensor, ...]:
        """The four tensors in torch's per-layer order."""
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh


@dataclass(frozen=True)
class PackedLayer:
    """One layer's weights laid out for `step`, in one dtype, detached (see each cell's `pack`)."""

    weight: torch.Tensor  # Elman, LSTM: [W U]^T (I + H, G*H), for one product over [x, h]; GRU: W^T (I, 3H)
    bias: torch.Tensor  # Elman, LSTM: b_W + b_U; GRU: b_W
    weight_hh: torch.Tensor | None = None  # GRU: U^T (H, 3H): r gates U h + b_U, so the products stay apart
    bias_hh: torch.Tensor | None = None  # GRU: b_U


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """weight x + bias, for a batch of row vectors x (B, in)."""
    return x @ weight.T + bias


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.detach().to(dtype).contiguous()


def _pack_joint(w: LayerWeights, dtype: torch.dtype) -> PackedLayer:
    """W and U side by side, so that [x_t, h_{t-1}] takes one product, and the two biases summed."""
    joint = torch.cat([w.weight_ih, w.weight_hh], dim=1).t()  # (I + H, G*H)
    return PackedLayer(_cast(joint, dtype), _cast(w.bias_ih + w.bias_hh, dtype))


def _joint_product(x: torch.Tensor, h_prev: torch.Tensor, packed: PackedLayer) -> torch.Tensor:
    """W x + U h_{t-1} + b, in the packed weights' dtype; x already in it."""
    return torch.addmm(packed.bias, torch.cat([x, h_prev.to(packed.weight.dtype)], dim=1), packed.weight)


class ElmanGates(NamedTuple):
    h: torch.Tensor

    @property
    def state(self) -> State:
        return (self.h,)


class GRUGates(NamedTuple):
    z: torch.Tensor  # update gate
    r: torch.Tensor  # reset gate
    n: torch.Tensor  # new memory h~
    h: torch.Tensor

    @property
    def state(self) -> State:
        return (self.h,)


class LSTMGates(NamedTuple):
    i: torch.Tensor  # input gate
    f: torch.Tensor  # forget gate
    g: torch.Tensor  # new memory cell c~
    o: torch.Tensor  # output gate
    c: torch.Tensor
    h: torch.Tensor

    @property
    def state(self) -> State:
        return (self.h, self.c)


class ElmanCell:
    """Vanilla RNN (Elman 1990): h_t = f(W(hh) h_{t-1} + W(hx) x_t), f in {tanh, relu, sigmoid}.

    The notes' recap uses the sigmoid, which torch's fused nn.RNN does not offer.
    """

    gate_count = 1
    state_names = ("h",)

    def __init__(self, nonlinearity: str = "tanh") -> None:
        self.f = NONLINEARITIES[nonlinearity]

    def __call__(self, x: torch.Tensor, state: State, w: LayerWeights) -> State:
        return self.gates(x, state, w).state

    def gates(self, x: torch.Tensor, state: State, w: LayerWeights) -> ElmanGates:
        (h_prev,) = state
        return self.equations(affine(h_prev, w.weight_hh, w.bias_hh) + affine(x, w.weight_ih, w.bias_ih))

    def step(self, x: torch.Tensor, state: State, packed: PackedLayer, dtype: torch.dtype) -> ElmanGates:
        return self.equations(_joint_product(x, state[0], packed).to(dtype))

    def pack(self, w: LayerWeights, dtype: torch.dtype) -> PackedLayer:
        return _pack_joint(w, dtype)

    def equations(self, pre: torch.Tensor) -> ElmanGates:
        """pre: W(hx) x_t + W(hh) h_{t-1} + biases, (B, H)."""
        return ElmanGates(self.f(pre))


class GRUCell:
    """Gated recurrent unit (Cho et al. 2014):

    z_t = σ(W(z) x_t + U(z) h_{t-1})           update gate
    r_t = σ(W(r) x_t + U(r) h_{t-1})           reset gate
    h~_t = tanh(W x_t + r_t ∘ U h_{t-1})       new memory
    h_t = z_t ∘ h_{t-1} + (1 - z_t) ∘ h~_t     final memory
    """

    gate_count = 3
    state_names = ("h",)

    def __call__(self, x: torch.Tensor, state: State, w: LayerWeights) -> State:
        return self.gates(x, state, w).state

    def gates(self, x: torch.Tensor, state: State, w: LayerWeights) -> GRUGates:
        (h_prev,) = state
        return self.equations(affine(x, w.weight_ih, w.bias_ih), affine(h_prev, w.weight_hh, w.bias_hh), h_prev)

    def step(self, x: torch.Tensor, state: State, packed: PackedLayer, dtype: torch.dtype) -> GRUGates:
        h_prev = state[0]
        assert packed.weight_hh is not None and packed.bias_hh is not None
        wx = torch.addmm(packed.bias, x, packed.weight).to(dtype)
        uh = torch.addmm(packed.bias_hh, h_prev.to(packed.weight.dtype), packed.weight_hh).to(dtype)
        return self.equations(wx, uh, h_prev)

    def pack(self, w: LayerWeights, dtype: torch.dtype) -> PackedLayer:
        return PackedLayer(
            _cast(w.weight_ih.t(), dtype),
            _cast(w.bias_ih, dtype),
            _cast(w.weight_hh.t(), dtype),
            _cast(w.bias_hh, dtype),
        )

    @staticmethod
    def equations(wx: torch.Tensor, uh: torch.Tensor, h_prev: torch.Tensor) -> GRUGates:
        """wx: W x_t + b_W and uh: U h_{t-1} + b_U, each (B, 3H) in gate order r, z, n."""
        r_x, z_x, n_x = wx.chunk(3, dim=1)
        r_h, z_h, n_h = uh.chunk(3, dim=1)
        r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
        n = torch.tanh(n_x + r * n_h)
        return GRUGates(z, r, n, n + z * (h_prev - n))  # z h_{t-1} + (1 - z) h~, one product fewer


class LSTMCell:
    """Long short-term memory (Hochreiter & Schmidhuber 1997):

    i_t = σ(W(i) x_t + U(i) h_{t-1})           input gate
    f_t = σ(W(f) x_t + U(f) h_{t-1})           forget gate
    o_t = σ(W(o) x_t + U(o) h_{t-1})           output gate
    c~_t = tanh(W(c) x_t + U(c) h_{t-1})       new memory cell
    c_t = f_t ∘ c_{t-1} + i_t ∘ c~_t           final memory cell
    h_t = o_t ∘ tanh(c_t)                      final hidden state
    """

    gate_count = 4
    state_names = ("h", "c")

    def __call__(self, x: torch.Tensor, state: State, w: LayerWeights) -> State:
        return self.gates(x, state, w).state

    def gates(self, x: torch.Tensor, state: State, w: LayerWeights) -> LSTMGates:
        h_prev, c_prev = state
        return self.equations(affine(x, w.weight_ih, w.bias_ih) + affine(h_prev, w.weight_hh, w.bias_hh), c_prev)

    def step(self, x: torch.Tensor, state: State, packed: PackedLayer, dtype: torch.dtype) -> LSTMGates:
        return self.equations(_joint_product(x, state[0], packed).to(dtype), state[1])

    def pack(self, w: LayerWeights, dtype: torch.dtype) -> PackedLayer:
        return _pack_joint(w, dtype)

    @staticmethod
    def equations(pre: torch.Tensor, c_prev: torch.Tensor) -> LSTMGates:
        """pre: W x_t + U h_{t-1} + biases, (B, 4H) in gate order i, f, g (c~), o."""
        size = c_prev.size(1)
        c_tilde = pre[:, 2 * size : 3 * size].tanh()
        gates = pre.sigmoid()  # i, f, o: one call over all four blocks costs less than three calls
        i, f, o = gates[:, :size], gates[:, size : 2 * size], gates[:, 3 * size :]
        c = torch.addcmul(f * c_prev, i, c_tilde)  # f c_{t-1} + i c~
        return LSTMGates(i, f, c_tilde, o, c, o * c.tanh())


Cell = ElmanCell | GRUCell | LSTMCell
Gates = ElmanGates | GRUGates | LSTMGates | MinGRUGates | MinLSTMGates  # the last two: models/mincells.py


def make_cell(cell: str, nonlinearity: str = "tanh") -> Cell:
    if cell == "lstm":
        return LSTMCell()
    if cell == "gru":
        return GRUCell()
    return ElmanCell(nonlinearity)


class StackStepper:
    """One time step of a whole stack: what generation runs once per token.

    The fused recurrent kernels are built for sequences: called for one time step, oneDNN sets up its
    primitive on every call, which costs a CPU several times the reading of the weights. So the stepper
    runs one layer at a time. For the LSTM, the GRU and the tanh/ReLU Elman cell in the model's dtype it
    calls torch's one-step kernel (`torch.lstm_cell`, `gru_cell`, `rnn_tanh_cell`, `rnn_relu_cell`): the
    same equations as the cell's, one Python call per layer instead of a dozen, on W and U stored
    transposed (the kernel multiplies by W^T, which then reads the matrix row after row). Otherwise
    (a sigmoid Elman cell, bf16 weights, or a `record` of the gates asked for) each layer runs its
    cell's `step` on weights `cell.pack` laid out for it, packed on first use. With `dtype` bfloat16 the
    weights are a bf16 copy (half the bytes read per token); the state stays in `exact`, the model's dtype.
    """

    def __init__(
        self, cell: Cell, layers: list[LayerWeights], exact: torch.dtype, dtype: torch.dtype | None = None
    ) -> None:
        self.cell, self.exact, self.dtype = cell, exact, dtype or exact
        self.per_layer = len(cell.state_names)
        self.weights = layers  # the model's own, packed for `step` when first needed
        self.kernel = _one_step_kernel(cell) if self.dtype == exact else None

    @functools.cached_property
    def kernel_weights(self) -> list[tuple[torch.Tensor, ...]]:
        """Each layer's weights for the one-step kernel, copied on first use (rnnlm/native needs none)."""
        with torch.no_grad():
            return [_transposed(w, self.exact) for w in self.weights]

    @functools.cached_property
    def layers(self) -> list[PackedLayer]:
        """Each layer's weights packed for its cell's `step`."""
        with torch.no_grad():
            return [self.cell.pack(w, self.dtype) for w in self.weights]

    def __call__(self, x: torch.Tensor, state: State, record: list[Gates] | None = None) -> tuple[torch.Tensor, State]:
        """x (B, I) in `dtype` -> the stack's output (the top layer's h) and the new state; with `record`,
        each layer's gates are appended to it."""
        if self.kernel is not None and record is None:
            return self._kernel_step(x, state)
        new: list[torch.Tensor] = []
        n, last = self.per_layer, len(self.weights) - 1
        for k, packed in enumerate(self.layers):
            gates = self.cell.step(x, state[k * n : (k + 1) * n], packed, self.exact)
            if record is not None:
                record.append(gates)
            new.extend(gates.state)
            if k < last:
                x = gates.h.to(self.dtype)
        return gates.h, tuple(new)

    def _kernel_step(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        kernel, n = self.kernel, self.per_layer
        assert kernel is not None
        new: list[torch.Tensor] = []
        for k, weights in enumerate(self.kernel_weights):
            layer = kernel(x, state[k * n : (k + 1) * n], *weights)
            new.extend(layer)
            x = layer[0]  # h, the next layer's input
        return x, tuple(new)


def _transposed(w: LayerWeights, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """w's four tensors for a one-step kernel, W and U as (G*H, in) views of W^T and U^T stored row-major: the
    kernel's product x W^T then reads the stored matrix in order, which a one-row product does faster."""
    return _cast(w.weight_ih.t(), dtype).t(), _cast(w.weight_hh.t(), dtype).t(), *(_cast(b, dtype) for b in w.all()[2:])


OneStepKernel = Callable[..., tuple[torch.Tensor, ...]]  # (x, layer state, w_ih, w_hh, b_ih, b_hh) -> layer state


def _lstm_kernel(x: torch.Tensor, state: State, *weights: torch.Tensor) -> State:
    return torch.lstm_cell(x, state, *weights)  # (h, c)


def _gru_kernel(x: torch.Tensor, state: State, *weights: torch.Tensor) -> State:
    return (torch.gru_cell(x, state[0], *weights),)


def _tanh_kernel(x: torch.Tensor, state: State, *weights: torch.Tensor) -> State:
    return (torch.rnn_tanh_cell(x, state[0], *weights),)


def _relu_kernel(x: torch.Tensor, state: State, *weights: torch.Tensor) -> State:
    return (torch.rnn_relu_cell(x, state[0], *weights),)


def _one_step_kernel(cell: Cell) -> OneStepKernel | None:
    """torch's one-step function computing `cell`'s equations, or None (the sigmoid Elman cell, other cells)."""
    if type(cell) is LSTMCell:
        return _lstm_kernel
    if type(cell) is GRUCell:
        return _gru_kernel
    if type(cell) is ElmanCell:
        return {torch.tanh: _tanh_kernel, torch.relu: _relu_kernel}.get(cell.f)
    return None


def native_layers(stepper: object) -> tuple[str, list[LayerWeights]] | None:
    """What rnnlm/native needs of a stack's one-step function that runs torch's one-step kernel: the cell's
    name there ("lstm", "gru", "tanh", "relu") and the layers' weights; None for other cells and steppers."""
    if not isinstance(stepper, StackStepper) or stepper.kernel is None:
        return None
    names = {_lstm_kernel: "lstm", _gru_kernel: "gru", _tanh_kernel: "tanh", _relu_kernel: "relu"}
    return names[stepper.kernel], stepper.weights
