"""The parallel-scan cells minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?") and their stack.

Their gates read the input alone, never h_{t-1}, so every unit follows h_t = a_t ∘ h_{t-1} + b_t with
a_t, b_t known for the whole window after one matrix product, and a prefix scan over time replaces the
step-by-step loop:

    minGRU   z_t = σ(W(z) x_t)                  update gate
             h~_t = g(W(h) x_t)                 candidate
             h_t = (1 - z_t) ∘ h_{t-1} + z_t ∘ h~_t          a_t = 1 - z_t, b_t = z_t ∘ h~_t
    minLSTM  f_t = σ(W(f) x_t),  i_t = σ(W(i) x_t)           forget and input gates
             f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)   normalised: the scale stays time-independent
             h~_t = g(W(h) x_t)
             h_t = f'_t ∘ h_{t-1} + i'_t ∘ h~_t              a_t = f'_t, b_t = i'_t ∘ h~_t

(every W x also has a bias). `model.min_activation` picks the paper's two versions of the candidate:
`g` (its log-space version), g(x) = x + 0.5 for x >= 0 and σ(x) below, so that h~ > 0; `identity` (its
vanilla version), h~ = W(h) x_t.

The fused path scans a whole window by halving (the odd-even scan; Ladner & Fischer 1980, Blelloch
1990): the maps h -> a h + b of steps 2k and 2k+1 compose into one, (a' a, a' b + b'), the half-length
sequence of composed maps is scanned the same way, which gives h at every odd step, and one more
product per even step gives the rest: O(T) work in 2 log2 T rounds of elementwise products and sums.
No division, logarithm or exponential: gates in (0, 1) multiply, sums of either sign add, nothing can
overflow or underflow that the step-by-step recurrence would not. The start h_0 enters linearly, folded
into the first b, so zero, as every window of a fresh stream starts, is fine.

The paper's own scan for the g version runs in log space, h_t = exp(a*_t + logcumsumexp(log b - a*))
with a* the cumulative sum of log a (Heinsen 2023), and needs h_0 > 0. On this CPU (CPU time, forward
and backward, one thread) it took about twice the time of a doubling scan (Hillis & Steele 1986: log2 T
rounds over the window; T = 64), which took 2.5 to 3 times this one's (T = 256); in float32 it also loses
eps |a*| to the subtraction.

Parameters per layer k: `weight_ih_l{k}` (G*H, I) and `bias_ih_l{k}` (G*H,), gate order z, h~ (minGRU) or
f, i, h~ (minLSTM), as torch names a fused kernel's input weights; no recurrent matrices.

Stacking. Plain, as every other stack here: each layer reads the one below's h, dropout between layers.
The paper's experiments wrap their cells in transformer-style blocks (residual connections,
normalisation, MLPs), and three options give that layout (`model.min_residual`, `min_norm`, `min_mlp`;
the paper's per-task details, such as any convolution, are not reproduced); with all three each layer
k is a pre-norm residual block

    u = LayerNorm(x)                  min_norm (parameters norm_l{k})
    h = minRNN(u)                     the recurrence, state h carried as always
    y = x + dropout(h)                min_residual: a stream of width H runs past every layer
    y = y + dropout(W2 GELU(W1 LayerNorm(y)))    min_mlp: a position-wise MLP min_mlp * H wide
                                      (mlp_norm_l{k}, mlp_in_l{k}, mlp_out_l{k})

and the stack's output is LayerNorm(x) of the top stream (norm_out). The dropout is the stack's between
layers (`model.dropout_between`, none in a one-layer stack). The output layer then reads the
stream, not the top layer's h: so a stepper returns the stack's output beside the state. The state
stays each layer's h, as without the options.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.models.contract import State, StateLayout
from rnnlm.models.regularize import dropout

if TYPE_CHECKING:  # cells.py's union of every cell's gates names these ones too
    from rnnlm.models.cells import Gates

MIN_CELLS = ("mingru", "minlstm")


class MinGRUGates(NamedTuple):
    z: torch.Tensor  # update gate
    n: torch.Tensor  # candidate h~
    h: torch.Tensor

    @property
    def state(self) -> State:
        return (self.h,)


class MinLSTMGates(NamedTuple):
    f: torch.Tensor  # normalised forget gate f' = f / (f + i)
    i: torch.Tensor  # normalised input gate i' = i / (f + i) = 1 - f'
    n: torch.Tensor  # candidate h~
    h: torch.Tensor

    @property
    def state(self) -> State:
        return (self.h,)


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation: x + 0.5 for x >= 0, σ(x) below (continuous at 0, slope 1 above)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class MinGRUCell:
    """minGRU; `equations` and `coefficients` take `pre` = W x + b (..., 2H) in gate order z, h~."""

    name = "mingru"
    gate_count = 2
    state_names = ("h",)

    def __init__(self, activation: str = "g") -> None:
        self.activation = activation

    def candidate(self, pre: torch.Tensor) -> torch.Tensor:
        return g(pre) if self.activation == "g" else pre

    def gates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z and h~, the only place either is computed."""
        z_pre, n_pre = pre.chunk(2, dim=-1)
        return torch.sigmoid(z_pre), self.candidate(n_pre)

    def equations(self, pre: torch.Tensor, h_prev: torch.Tensor) -> MinGRUGates:
        """One step: the reference stack's and the stepper's."""
        z, n = self.gates(pre)
        return MinGRUGates(z, n, (1 - z) * h_prev + z * n)

    def coefficients(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same step as h_t = a_t ∘ h_{t-1} + b_t, for the scan: a = 1 - z, b = z ∘ h~."""
        z, n = self.gates(pre)
        return 1 - z, z * n


class MinLSTMCell:
    """minLSTM; `equations` and `coefficients` take `pre` = W x + b (..., 3H) in gate order f, i, h~."""

    name = "minlstm"
    gate_count = 3
    state_names = ("h",)

    def __init__(self, activation: str = "g") -> None:
        self.activation = activation

    def candidate(self, pre: torch.Tensor) -> torch.Tensor:
        return g(pre) if self.activation == "g" else pre

    def gates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f', i' (normalised) and h~, the only place any of them is computed."""
        f_pre, i_pre, n_pre = pre.chunk(3, dim=-1)
        f, i = torch.sigmoid(f_pre), torch.sigmoid(i_pre)
        return f / (f + i), i / (f + i), self.candidate(n_pre)

    def equations(self, pre: torch.Tensor, h_prev: torch.Tensor) -> MinLSTMGates:
        """One step: the reference stack's and the stepper's."""
        f, i, n = self.gates(pre)
        return MinLSTMGates(f, i, n, f * h_prev + i * n)

    def coefficients(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same step as h_t = a_t ∘ h_{t-1} + b_t, for the scan: a = f', b = i' ∘ h~."""
        f, i, n = self.gates(pre)
        return f, i * n


MinCell = MinGRUCell | MinLSTMCell
MinGates = MinGRUGates | MinLSTMGates


def make_min_cell(cell: str, activation: str) -> MinCell:
    return MinGRUCell(activation) if cell == "mingru" else MinLSTMCell(activation)


def pairwise_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t for t = 1..T from a, b (T, B, H) and h0 (B, H): (T, B, H)."""
    return _scan_from_zero(a, torch.cat([torch.addcmul(b[:1], a[:1], h0), b[1:]]))


def _scan_from_zero(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same from h_0 = 0, by halving (the module docstring)."""
    length = a.size(0)
    if length == 1:
        return b
    if length % 2:  # the last step on its own, after the even-length rest
        h = _scan_from_zero(a[:-1], b[:-1])
        return torch.cat([h, torch.addcmul(b[-1:], a[-1:], h[-1:])])
    # unbind, not a[0::2]: its backward stacks the two halves' gradients instead of zero-filling twice
    a_even, a_odd = a.unflatten(0, (-1, 2)).unbind(1)
    b_even, b_odd = b.unflatten(0, (-1, 2)).unbind(1)
    h_odd = _scan_from_zero(a_odd * a_even, torch.addcmul(b_odd, a_odd, b_even))  # each pair composed
    h_even = torch.cat([b_even[:1], torch.addcmul(b_even[1:], a_even[1:], h_odd[:-1])])
    return torch.stack([h_even, h_odd], dim=1).flatten(0, 1)  # interleaved back into time order


def reference_layer(
    cell: MinCell, inputs: torch.Tensor, h0: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The same window one step at a time through the cell's `equations`: inputs (T, B, I) -> h (T, B, H)."""
    outputs, h = [], h0
    for x_t in inputs:  # (B, I)
        h = cell.equations((x_t @ weight.T + bias).to(h.dtype), h).h
        outputs.append(h)
    return torch.stack(outputs)


class MinStack(nn.Module):
    """minGRU or minLSTM layers, each reading the one below (or the stream past it: `residual`, `norm`, `mlp`
    are the layout of the module docstring); `fused` scans each window, else steps through it.

    The state is each layer's h, `(h_0, h_1, ...)`, carried from window to window like any other stack's.
    """

    def __init__(
        self,
        cell: str,
        sizes: list[int],
        activation: str = "g",
        fused: bool = True,
        between: float = 0.0,
        locked: bool = False,
        residual: bool = False,
        norm: bool = False,
        mlp: int = 0,
    ) -> None:
        super().__init__()
        if residual and len(set(sizes)) > 1:
            raise ValueError(f"a residual stack needs every size equal (got {sizes})")
        self.cell_name, self.sizes, self.fused = cell, sizes, fused
        self.cell = make_min_cell(cell, activation)
        self.layout = StateLayout(self.cell.state_names, tuple(sizes[1:]))
        self.num_layers = len(sizes) - 1
        self.between, self.locked = between, locked
        self.residual, self.norm, self.mlp = residual, norm, mlp
        gates = self.cell.gate_count
        for k in range(self.num_layers):
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(gates * sizes[k + 1], sizes[k])))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(gates * sizes[k + 1])))
            hidden = sizes[k + 1]
            if norm:
                self.add_module(f"norm_l{k}", nn.LayerNorm(sizes[k]))
            if mlp and norm:
                self.add_module(f"mlp_norm_l{k}", nn.LayerNorm(hidden))
            if mlp:
                self.add_module(f"mlp_in_l{k}", nn.Linear(hidden, mlp * hidden))
                self.add_module(f"mlp_out_l{k}", nn.Linear(mlp * hidden, hidden))
        if norm:
            self.norm_out = nn.LayerNorm(sizes[-1])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for k in range(self.num_layers):  # torch's recurrent layers' initialisation, per layer size
            bound = 1.0 / math.sqrt(self.sizes[k + 1])
            for w in self.layer(k):
                nn.init.uniform_(w, -bound, bound)

    def layer(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer k's (weight (G*H, I), bias (G*H,))."""
        return getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_ih_l{k}")

    def init_state(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> State:
        return self.layout.zeros(batch_size, device, dtype)

    def stepper(self, exact: torch.dtype, dtype: torch.dtype | None = None) -> MinStepper:
        return MinStepper(self, exact, dtype)

    def forward(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        stream = inputs  # (T, B, I): the embeddings, then each layer's output
        final: list[torch.Tensor] = []
        for k in range(self.num_layers):
            (h0,), (weight, bias) = self.layout.layer(state, k), self.layer(k)
            u = self.enter(k, stream)
            if self.fused:  # one product for the whole window, then the scan (in the state's dtype under autocast)
                pre = F.linear(u, weight, bias).to(h0.dtype)  # (T, B, G*H)
                h = pairwise_scan(*self.cell.coefficients(pre), h0)
            else:
                h = reference_layer(self.cell, u, h0, weight, bias)
            final.append(h[-1])
            stream = self.join(k, stream, h, self.training)
        return self.leave(stream), tuple(final)  # (T, B, H_top)

    def enter(self, k: int, stream: torch.Tensor) -> torch.Tensor:
        """What layer k's cell reads: the stream below, normalised with min_norm."""
        return getattr(self, f"norm_l{k}")(stream) if self.norm else stream

    def join(self, k: int, stream: torch.Tensor, h: torch.Tensor, training: bool) -> torch.Tensor:
        """The stream above layer k, from the stream below it and layer k's h (the module docstring)."""

        def drop(x: torch.Tensor) -> torch.Tensor:
            return dropout(x, self.between, training, self.locked)

        if self.residual:
            stream = stream + drop(h)
            return stream + drop(self.feed_forward(k, stream)) if self.mlp else stream
        stream = h + self.feed_forward(k, h) if self.mlp else h
        return stream if k == self.num_layers - 1 else drop(stream)

    def feed_forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        u = getattr(self, f"mlp_norm_l{k}")(x) if self.norm else x
        return getattr(self, f"mlp_out_l{k}")(F.gelu(getattr(self, f"mlp_in_l{k}")(u)))

    def leave(self, stream: torch.Tensor) -> torch.Tensor:
        """The stack's output: the top stream, normalised with min_norm."""
        return self.norm_out(stream) if self.norm else stream


class MinStepper:
    """One time step of a whole stack for generation, through the cells' `equations` on weights laid out
    for it (W^T, detached, in `dtype`); the state stays in `exact`, the model's dtype, and so do the layout's
    norms and MLPs (run through a frozen copy of the stack, in eval mode)."""

    def __init__(self, stack: MinStack, exact: torch.dtype, dtype: torch.dtype | None = None) -> None:
        self.cell, self.exact, self.dtype = stack.cell, exact, dtype or exact
        with torch.no_grad():
            layers = [stack.layer(k) for k in range(stack.num_layers)]
            self.layers = [(w.detach().t().to(self.dtype).contiguous(), b.detach().to(self.dtype)) for w, b in layers]
        self.stack = copy.deepcopy(stack).eval().requires_grad_(False)  # a snapshot: later training leaves it be

    def __call__(self, x: torch.Tensor, state: State, record: list[Gates] | None = None) -> tuple[torch.Tensor, State]:
        """x (B, I) in `dtype` -> the stack's output (B, H_top) and the new state; with `record`, each
        layer's gates are appended to it."""
        new: list[torch.Tensor] = []
        stream = x.to(self.exact)
        with torch.no_grad():
            for k, (weight, bias) in enumerate(self.layers):
                u = self.stack.enter(k, stream).to(self.dtype)
                gates = self.cell.equations(torch.addmm(bias, u, weight).to(self.exact), state[k])
                if record is not None:
                    record.append(gates)
                new.append(gates.h)
                stream = self.stack.join(k, stream, gates.h, training=False)
        return self.stack.leave(stream), tuple(new)
