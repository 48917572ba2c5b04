"""The hand-written delta recursion (rnnlm/backprop.py) computes what torch's autograd computes, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnlm.backprop import DERIVATIVES, elman_backprop
from rnnlm.errors import UsageError
from rnnlm.models.cells import NONLINEARITIES, ElmanCell, LayerWeights, affine

SIZES = [(1, 1), (5, 3), (12, 2)]  # (T, B)
IN, H, V = 4, 6, 7  # input, hidden and vocabulary sizes


def problem(steps: int, batch: int, seed: int = 0) -> dict:
    """Random float64 inputs, targets, h_0 and weights, scaled so no gradient is near zero or saturated."""
    g = torch.Generator().manual_seed(seed)

    def draw(*shape: int, scale: float = 0.5) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    weights = LayerWeights(draw(H, IN), draw(H, H), draw(H, scale=0.2), draw(H, scale=0.2))
    return dict(
        inputs=draw(steps, batch, IN, scale=1.0),
        targets=torch.randint(V, (steps, batch), generator=g),
        initial_state=draw(batch, H),
        weights=weights,
        output_weight=draw(V, H),
        output_bias=draw(V),
    )


def autograd_reference(p: dict, nonlinearity: str) -> dict:
    """The same RNN through rnnlm's ElmanCell equations and torch's cross-entropy, differentiated by autograd."""
    cell, w = ElmanCell(nonlinearity), p["weights"]
    h, pre, hidden, losses = p["initial_state"], [], [], []
    for t, x_t in enumerate(p["inputs"]):
        z = affine(h, w.weight_hh, w.bias_hh) + affine(x_t, w.weight_ih, w.bias_ih)
        z.retain_grad()
        h = cell.equations(z).h
        pre.append(z)
        hidden.append(h)
        losses.append(
            F.cross_entropy(F.linear(h, p["output_weight"], p["output_bias"]), p["targets"][t], reduction="sum")
        )
    loss = torch.stack(losses).sum()
    loss.backward(retain_graph=True)
    pre_grads = [z.grad.clone() for z in pre if z.grad is not None]  # before the next call adds to them
    last = torch.autograd.grad(losses[-1], hidden[::-1])  # dJ^(T)/dh_{T-k}, k = 0..T-1
    return dict(loss=loss, pre_grads=pre_grads, last=last)


@pytest.mark.parametrize("steps,batch", SIZES)
@pytest.mark.parametrize("nonlinearity", sorted(NONLINEARITIES))
def test_delta_recursion_equals_autograd_in_float64(nonlinearity: str, steps: int, batch: int) -> None:
    p = problem(steps, batch)
    with torch.no_grad():
        mine = elman_backprop(**p, nonlinearity=nonlinearity)
    ref = autograd_reference(p, nonlinearity)
    w = p["weights"]
    pairs = [
        (mine.loss, ref["loss"]),
        (mine.layer.weight_hh, w.weight_hh.grad),
        (mine.layer.weight_ih, w.weight_ih.grad),
        (mine.layer.bias_hh, w.bias_hh.grad),
        (mine.layer.bias_ih, w.bias_ih.grad),
        (mine.output_weight, p["output_weight"].grad),
        (mine.output_bias, p["output_bias"].grad),
        (mine.inputs, p["inputs"].grad),
        (mine.initial_state, p["initial_state"].grad),
    ]
    for a, b in pairs:
        assert b.abs().max() > 1e-3  # every gradient compared is a real number, not a pair of zeros
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("steps,batch", SIZES)
@pytest.mark.parametrize("nonlinearity", sorted(NONLINEARITIES))
def test_delta_norms_equal_autograds_state_gradients(nonlinearity: str, steps: int, batch: int) -> None:
    """||δ_t|| is the size of autograd's dJ/dz_t; the last step's curve is that of dJ^(T)/dh_{T-k}."""
    p = problem(steps, batch, seed=1)
    with torch.no_grad():
        mine = elman_backprop(**p, nonlinearity=nonlinearity)
    ref = autograd_reference(p, nonlinearity)
    expected_deltas = torch.stack([g.norm(dim=1).mean() for g in ref["pre_grads"]])
    expected_last = torch.stack([g.norm(dim=1).mean() for g in ref["last"]])
    assert mine.delta_norms.shape == mine.last_step_norms.shape == (steps,)
    torch.testing.assert_close(mine.delta_norms, expected_deltas, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(mine.last_step_norms, expected_last, rtol=1e-10, atol=1e-14)


def test_the_last_steps_gradient_shrinks_by_the_jacobian_each_step_back() -> None:
    """With W(hh) = 0.5 I and f = relu on positive pre-activations, each Jacobian diag(f'(z)) W(hh) is 0.5 I:
    ||dJ^(T)/dh_{T-k}|| = 0.5^k ||dJ^(T)/dh_T||, the vanishing gradient in its simplest form."""
    p = problem(10, 3, seed=2)
    with torch.no_grad():
        p["weights"].weight_hh.copy_(0.5 * torch.eye(H))
        p["weights"].weight_ih.mul_(0.01)
        p["weights"].bias_ih.fill_(1.0)  # z_t > 0 at every step: relu is the identity there
        p["initial_state"].abs_()
        mine = elman_backprop(**p, nonlinearity="relu")
    halving = 0.5 ** torch.arange(10, dtype=torch.float64)
    torch.testing.assert_close(mine.last_step_norms, mine.last_step_norms[0] * halving, rtol=1e-12, atol=0)


def test_every_nonlinearity_of_the_cells_has_its_derivative() -> None:
    assert set(DERIVATIVES) == set(NONLINEARITIES)


def test_an_unknown_nonlinearity_is_one_usage_error() -> None:
    p = problem(2, 1)
    with pytest.raises(UsageError, match="unknown nonlinearity 'gelu'; choose one of relu, sigmoid, tanh"):
        elman_backprop(**p, nonlinearity="gelu")
