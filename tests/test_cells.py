"""The reference cells are the lecture's equations, and they compute what torch's fused kernels do."""

import pytest
import torch

from helpers import tiny_config, train_run
from rnnlm.config import load_config
from rnnlm.errors import ConfigError
from rnnlm.models.cells import ElmanCell, GRUCell, LayerWeights, LSTMCell
from rnnlm.models.lm import RNNLM
from rnnlm.models.stack import FusedGRU, FusedLSTM, FusedRNN, ReferenceStack

KINDS = [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"), ("lstm", "tanh")]


def fused_stack(cell, nonlinearity, I, H, L):
    if cell == "lstm":
        return FusedLSTM(I, H, L)
    if cell == "gru":
        return FusedGRU(I, H, L)
    return FusedRNN(I, H, L, nonlinearity=nonlinearity)


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_reference_stack_equals_fused_kernel_in_float64(cell, nonlinearity):
    torch.manual_seed(0)
    T, B, I, H, L = 6, 3, 5, 4, 2
    fused = fused_stack(cell, nonlinearity, I, H, L).double()
    reference = ReferenceStack(cell, [I] + [H] * L, nonlinearity=nonlinearity).double()
    reference.load_state_dict(fused.state_dict())
    assert [n for n, _ in reference.named_parameters()] == [n for n, _ in fused.named_parameters()]
    x = torch.randn(T, B, I, dtype=torch.float64)
    state = tuple(torch.randn(B, H, dtype=torch.float64) for _ in range(L * (2 if cell == "lstm" else 1)))
    outputs = []
    for stack in (fused, reference):
        x_ = x.clone().requires_grad_()
        s_ = tuple(s.clone().requires_grad_() for s in state)
        out, final = stack(x_, s_)
        loss = (out * torch.linspace(-1, 1, H, dtype=torch.float64)).sum() + sum((f ** 2).sum() for f in final)
        loss.backward()
        outputs.append((out, final, x_.grad, [s.grad for s in s_], [p.grad for p in stack.parameters()]))
    (o1, f1, gx1, gs1, gp1), (o2, f2, gx2, gs2, gp2) = outputs
    for a, b in [(o1, o2), *zip(f1, f2), (gx1, gx2), *zip(gs1, gs2), *zip(gp1, gp2)]:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", [ElmanCell("tanh"), ElmanCell("relu"), ElmanCell("sigmoid"), GRUCell(), LSTMCell()],
                         ids=["rnn-tanh", "rnn-relu", "rnn-sigmoid", "gru", "lstm"])
def test_gradcheck_each_cell(cell):
    torch.manual_seed(1)
    B, I, H, G = 2, 3, 4, cell.gate_count
    params = [torch.randn(G * H, I), torch.randn(G * H, H), torch.randn(G * H), torch.randn(G * H)]
    params = [p.double().requires_grad_() for p in params]
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    state = [torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(2 if G == 4 else 1)]

    def step(x, *rest):
        state, weights = rest[: len(rest) - 4], LayerWeights(*rest[len(rest) - 4:])
        return cell(x, tuple(state), weights)

    assert torch.autograd.gradcheck(step, (x, *state, *params))


def test_cells_follow_the_equations_on_a_hand_computed_step():
    """One GRU step against the notes' four equations, written out with separate matrices."""
    torch.manual_seed(2)
    H, I = 3, 2
    W = {g: torch.randn(H, I, dtype=torch.float64) for g in "rzn"}
    U = {g: torch.randn(H, H, dtype=torch.float64) for g in "rzn"}
    weights = LayerWeights(torch.cat([W["r"], W["z"], W["n"]]), torch.cat([U["r"], U["z"], U["n"]]),
                           torch.zeros(3 * H, dtype=torch.float64), torch.zeros(3 * H, dtype=torch.float64))
    x, h = torch.randn(1, I, dtype=torch.float64), torch.randn(1, H, dtype=torch.float64)
    z = torch.sigmoid(W["z"] @ x[0] + U["z"] @ h[0])
    r = torch.sigmoid(W["r"] @ x[0] + U["r"] @ h[0])
    h_tilde = torch.tanh(W["n"] @ x[0] + r * (U["n"] @ h[0]))
    expected = z * h[0] + (1 - z) * h_tilde
    (actual,) = GRUCell()(x, (h,), weights)
    torch.testing.assert_close(actual[0], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell,nonlinearity", [*KINDS, ("rnn", "sigmoid")])
def test_finite_differences_through_several_bptt_steps(cell, nonlinearity):
    """d loss / d U through 6 time steps and 2 layers: autograd against central differences."""
    torch.manual_seed(3)
    config = load_config(None, [f"model.cell={cell}", f"model.nonlinearity={nonlinearity}", "model.impl=reference",
                                "model.num_layers=2", "model.embed_size=4", "model.hidden_size=5"]).model
    model = RNNLM(7, config).double()
    inputs, targets = torch.randint(0, 7, (6, 2)), torch.randint(0, 7, (6, 2))

    def loss() -> torch.Tensor:
        return model(inputs, targets, tuple(s.double() for s in model.init_state(2))).nll

    loss().backward()
    weight = model.rnn.weight_hh_l0
    eps = 1e-5
    for index in [(0, 0), (2, 3), (weight.shape[0] - 1, 4)]:
        with torch.no_grad():
            weight[index] += eps
            up = loss().item()
            weight[index] -= 2 * eps
            down = loss().item()
            weight[index] += eps
        assert weight.grad[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_sigmoid_rnn_needs_the_reference_cells():
    with pytest.raises(ConfigError, match="sigmoid needs model.impl: reference"):
        load_config(None, ["model.cell=rnn", "model.nonlinearity=sigmoid"])


def test_sigmoid_rnn_trains_and_lowers_the_loss(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, "model.cell=rnn", "model.nonlinearity=sigmoid", "model.impl=reference",
                         "model.hidden_size=32", "train.max_steps=150", "optim.name=adam", "optim.lr=0.01")
    trainer, _ = train_run(config, tmp_path / "run")
    losses = [e["loss"] for e in trainer.history if "loss" in e]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.7


@pytest.mark.parametrize("cell,nonlinearity", KINDS)
def test_layer_by_layer_kernel_equals_reference_with_unequal_sizes(cell, nonlinearity):
    from rnnlm.models.stack import KernelStack
    torch.manual_seed(4)
    sizes = [5, 7, 7, 3]  # AWD-LSTM's shape in miniature: a narrower top layer
    reference = ReferenceStack(cell, sizes, nonlinearity=nonlinearity).double()
    kernel = KernelStack(cell, sizes, nonlinearity=nonlinearity).double()
    kernel.load_state_dict(reference.state_dict())
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    state = reference.init_state(2, "cpu", torch.float64)
    (o1, f1), (o2, f2) = reference(x, state), kernel(x, state)
    assert o1.shape == (6, 2, 3)
    for a, b in [(o1, o2), *zip(f1, f2)]:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
