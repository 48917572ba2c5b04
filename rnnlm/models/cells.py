"""The lecture's recurrent cells, one small class each, written from its equations (plus biases).

A cell holds no parameters: it is handed one layer's weights in torch's own layout, so a stack
of these cells loads the very state_dict of the fused kernels (`nn.RNN`, `nn.GRU`, `nn.LSTM`):
`weight_ih` stacks the input matrices W of every gate, `weight_hh` the recurrent matrices U,
each with a bias (`bias_ih`, `bias_hh`). Gate order is torch's: GRU (r, z, n), LSTM (i, f, g, o).
Shapes: x_t (B, I), h_{t-1} and c_{t-1} (B, H).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

State = tuple[torch.Tensor, ...]


@dataclass
class LayerWeights:
    weight_ih: torch.Tensor  # (G*H, I): the W matrices of the G gates, stacked
    weight_hh: torch.Tensor  # (G*H, H): the U matrices
    bias_ih: torch.Tensor  # (G*H,)
    bias_hh: torch.Tensor  # (G*H,)

    def all(self) -> tuple[torch.Tensor, ...]:
        """The four tensors in torch's per-layer order."""
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def gates(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(W, U, b_W, b_U) for each of `count` gates, in the stacked order."""
        return list(zip(self.weight_ih.chunk(count), self.weight_hh.chunk(count),
                        self.bias_ih.chunk(count), self.bias_hh.chunk(count)))


def affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """weight x + bias, for a batch of row vectors x (B, in)."""
    return x @ weight.T + bias


class ElmanCell:
    """Vanilla RNN (Elman 1990): h_t = f(W(hh) h_{t-1} + W(hx) x_t), f in {tanh, relu, sigmoid}.

    The notes' recap uses the sigmoid, which torch's fused nn.RNN does not offer.
    """

    gate_count = 1
    nonlinearities = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}

    def __init__(self, nonlinearity: str = "tanh") -> None:
        self.f = self.nonlinearities[nonlinearity]

    def __call__(self, x: torch.Tensor, state: State, w: LayerWeights) -> State:
        (h_prev,) = state
        h = self.f(affine(h_prev, w.weight_hh, w.bias_hh) + affine(x, w.weight_ih, w.bias_ih))
        return (h,)


class GRUCell:
    """Gated recurrent unit (Cho et al. 2014):

        z_t = σ(W(z) x_t + U(z) h_{t-1})           update gate
        r_t = σ(W(r) x_t + U(r) h_{t-1})           reset gate
        h~_t = tanh(W x_t + r_t ∘ U h_{t-1})       new memory
        h_t = z_t ∘ h_{t-1} + (1 - z_t) ∘ h~_t     final memory
    """

    gate_count = 3

    def __call__(self, x: torch.Tensor, state: State, w: LayerWeights) -> State:
        (h_prev,) = state
        (W_r, U_r, b_r, c_r), (W_z, U_z, b_z, c_z), (W, U, b, c) = w.gates(3)
        z = torch.sigmoid(affine(x, W_z, b_z) + affine(h_prev, U_z, c_z))
        r = torch.sigmoid(affine(x, W_r, b_r) + affine(h_prev, U_r, c_r))
        h_tilde = torch.tanh(affine(x, W, b) + r * affine(h_prev, U, c))
        h = z * h_prev + (1 - z) * h_tilde
        return (h,)


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

    def __call__(self, x: torch.Tensor, state: State, w: LayerWeights) -> State:
        h_prev, c_prev = state
        (W_i, U_i, b_i, d_i), (W_f, U_f, b_f, d_f), (W_c, U_c, b_c, d_c), (W_o, U_o, b_o, d_o) = w.gates(4)
        i = torch.sigmoid(affine(x, W_i, b_i) + affine(h_prev, U_i, d_i))
        f = torch.sigmoid(affine(x, W_f, b_f) + affine(h_prev, U_f, d_f))
        o = torch.sigmoid(affine(x, W_o, b_o) + affine(h_prev, U_o, d_o))
        c_tilde = torch.tanh(affine(x, W_c, b_c) + affine(h_prev, U_c, d_c))
        c = f * c_prev + i * c_tilde
        h = o * torch.tanh(c)
        return (h, c)


def make_cell(cell: str, nonlinearity: str = "tanh") -> ElmanCell | GRUCell | LSTMCell:
    if cell == "lstm":
        return LSTMCell()
    if cell == "gru":
        return GRUCell()
    return ElmanCell(nonlinearity)
