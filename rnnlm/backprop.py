"""The lecture's backpropagation by hand: the delta recursion through time for the Elman RNN.

The notes (seed/fancy-recurrent-neural-networks.txt) give backpropagation for a multilayer net as

    δ^(l) = ((W^(l))^T δ^(l+1)) ∘ f'(z^(l))          (B1: the delta recursion)
    ∂E/∂W^(l) = δ^(l+1) (a^(l))^T                     (B2: a weight's gradient, its delta times its input)

and the RNN as h_t = f(W(hh) h_{t-1} + W(hx) x_t) (plus a bias here, as `ElmanCell`), ŷ_t = softmax(U h_t + b_U)
(their W(S), with a bias), J^(t) = -Σ_j y_{t,j} log ŷ_{t,j}; z_t is the pre-activation, h_t = f(z_t). Unrolled
in time the RNN is a deep net whose layers share W(hh): B1 and B2 apply step by step, time playing the part of
depth. `elman_backprop` writes that out without autograd; tests/test_backprop.py holds it to torch's autograd.
Its per-step delta norms are the teaching version of the gradient-flow curve (rnnlm/gradflow.py measures it on
any model).

Shapes: batches of row vectors, so the notes' W^T δ is `delta @ W` here. x (T, B, I), h (B, H), U (V, H).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rnnlm.errors import UsageError
from rnnlm.models.cells import NONLINEARITIES, LayerWeights

# f'(z), written from z and a = f(z) (the activation the forward pass stored), one per `NONLINEARITIES` entry
DERIVATIVES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "tanh": lambda z, a: 1 - a * a,
    "sigmoid": lambda z, a: a * (1 - a),
    "relu": lambda z, a: (z > 0).to(a.dtype),
}


@dataclass
class ElmanForward:
    """What the forward pass stores for the backward one: every step's z_t, h_t and ŷ_t."""

    pre: list[torch.Tensor]  # z_t = W(hh) h_{t-1} + W(hx) x_t + b, (B, H) for t = 1..T
    hidden: list[torch.Tensor]  # h_0 .. h_T, (B, H): h_0 the given initial state
    probs: list[torch.Tensor]  # ŷ_t = softmax(U h_t + b_U), (B, V) for t = 1..T
    loss: torch.Tensor  # J = Σ_t Σ_batch J^(t), in nats


@dataclass
class ElmanGradients:
    """dJ/d(everything) for J = Σ_t J^(t) summed over the batch, and the sizes of the deltas on the way."""

    loss: torch.Tensor  # J
    layer: LayerWeights  # dJ/dW(hx), dJ/dW(hh), dJ/db_hx, dJ/db_hh in `ElmanCell`'s layout
    output_weight: torch.Tensor  # dJ/dU, (V, H)
    output_bias: torch.Tensor  # dJ/db_U, (V,)
    inputs: torch.Tensor  # dJ/dx_t, (T, B, I)
    initial_state: torch.Tensor  # dJ/dh_0, (B, H)
    delta_norms: torch.Tensor  # (T,): ||δ_t|| = ||dJ/dz_t|| for t = 1..T, averaged over the batch
    last_step_norms: torch.Tensor  # (T,): ||dJ^(T)/dh_{T-k}|| for k = 0..T-1, averaged over the batch


def derivative(nonlinearity: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """f' for one of the nonlinearities `ElmanCell` offers; a UsageError line for any other name."""
    if nonlinearity not in DERIVATIVES:
        raise UsageError(f"unknown nonlinearity {nonlinearity!r}; choose one of {', '.join(sorted(DERIVATIVES))}")
    return DERIVATIVES[nonlinearity]


def elman_forward(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    initial_state: torch.Tensor,
    weights: LayerWeights,
    output_weight: torch.Tensor,
    output_bias: torch.Tensor,
    nonlinearity: str,
) -> ElmanForward:
    """Run the RNN over inputs (T, B, I), keeping z_t, h_t and ŷ_t; targets (T, B) are the classes y_t."""
    derivative(nonlinearity)
    f = NONLINEARITIES[nonlinearity]
    pre, hidden, probs = [], [initial_state], []
    loss = inputs.new_zeros(())
    for t in range(inputs.size(0)):
        z = hidden[-1] @ weights.weight_hh.T + weights.bias_hh + inputs[t] @ weights.weight_ih.T + weights.bias_ih
        h = f(z)  # h_t = f(z_t)
        y_hat = torch.softmax(h @ output_weight.T + output_bias, dim=1)  # ŷ_t = softmax(U h_t + b_U)
        loss = loss - y_hat.gather(1, targets[t].unsqueeze(1)).log().sum()  # J^(t) = -log ŷ_{t, target}
        pre.append(z)
        hidden.append(h)
        probs.append(y_hat)
    return ElmanForward(pre, hidden, probs, loss)


def elman_backprop(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    initial_state: torch.Tensor,
    weights: LayerWeights,
    output_weight: torch.Tensor,
    output_bias: torch.Tensor,
    nonlinearity: str = "tanh",
) -> ElmanGradients:
    """Backpropagation through time by the notes' delta recursion, for J = Σ_t J^(t) over the batch.

    Args: inputs x_t (T, B, I), targets y_t as class ids (T, B), initial_state h_0 (B, H), the recurrent
    layer's `weights` (W(hx) = weight_ih, W(hh) = weight_hh, two biases as torch keeps them), the output
    layer U (V, H) and b_U (V,), and f's name ("tanh", "relu", "sigmoid"). Nothing here calls autograd.
    """
    fwd = elman_forward(inputs, targets, initial_state, weights, output_weight, output_bias, nonlinearity)
    f_prime = derivative(nonlinearity)
    W_hh, W_hx, U = weights.weight_hh, weights.weight_ih, output_weight
    steps = inputs.size(0)
    dW_hh, dW_hx, db = torch.zeros_like(W_hh), torch.zeros_like(W_hx), torch.zeros_like(weights.bias_hh)
    dU, db_U, dx = torch.zeros_like(U), torch.zeros_like(output_bias), torch.zeros_like(inputs)
    delta_norms = inputs.new_zeros(steps)
    delta_next = torch.zeros_like(initial_state)  # δ_{T+1} = 0: no step reads h_T after the last
    for t in reversed(range(steps)):  # list index t holds step t + 1: z, ŷ at [t], h_t at hidden[t + 1]
        # δ(S)_t = ∂J^(t)/∂(U h_t + b_U) = ŷ_t - y_t: softmax and cross-entropy together
        delta_out = fwd.probs[t] - F.one_hot(targets[t], U.size(0)).to(U.dtype)
        dU += delta_out.T @ fwd.hidden[t + 1]  # B2 for the output layer: ∂J/∂U = Σ_t δ(S)_t h_t^T
        db_U += delta_out.sum(0)
        # B1 through time: h_t feeds two successors, ŷ_t (by U) and z_{t+1} (by W(hh)), so
        # δ_t = (U^T δ(S)_t + W(hh)^T δ_{t+1}) ∘ f'(z_t)
        delta = (delta_out @ U + delta_next @ W_hh) * f_prime(fwd.pre[t], fwd.hidden[t + 1])
        dW_hh += delta.T @ fwd.hidden[t]  # B2: ∂J/∂W(hh) = Σ_t δ_t h_{t-1}^T
        dW_hx += delta.T @ inputs[t]  # B2: ∂J/∂W(hx) = Σ_t δ_t x_t^T
        db += delta.sum(0)  # ∂J/∂b = Σ_t δ_t (both biases: they enter z_t the same way)
        dx[t] = delta @ W_hx  # ∂J/∂x_t = W(hx)^T δ_t: the word vectors' gradient
        delta_norms[t] = delta.norm(dim=1).mean()
        delta_next = delta
    initial = delta_next @ W_hh  # ∂J/∂h_0 = W(hh)^T δ_1
    layer = LayerWeights(dW_hx, dW_hh, db, db.clone())
    return ElmanGradients(
        fwd.loss, layer, dU, db_U, dx, initial, delta_norms, last_step_norms(fwd, targets, W_hh, U, f_prime)
    )


def last_step_norms(
    fwd: ElmanForward,
    targets: torch.Tensor,
    W_hh: torch.Tensor,
    U: torch.Tensor,
    f_prime: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """||∂J^(T)/∂h_{T-k}|| for k = 0..T-1, averaged over the batch: the last step's loss alone, sent back.

    The same recursion with one loss: ∂J^(T)/∂h_T = U^T δ(S)_T, then ∂J^(T)/∂h_{t-1} = W(hh)^T (∂J^(T)/∂h_t ∘ f'(z_t)),
    a product of Jacobians diag(f'(z_t)) W(hh) whose size decides whether the gradient vanishes or explodes.
    """
    steps = len(fwd.pre)
    grad = (fwd.probs[-1] - F.one_hot(targets[-1], U.size(0)).to(U.dtype)) @ U  # ∂J^(T)/∂h_T, (B, H)
    norms = [grad.norm(dim=1).mean()]
    for t in reversed(range(1, steps)):  # from ∂J^(T)/∂h_{t+1} (list index t) to ∂J^(T)/∂h_t
        grad = (grad * f_prime(fwd.pre[t], fwd.hidden[t + 1])) @ W_hh
        norms.append(grad.norm(dim=1).mean())
    return torch.stack(norms)
