"""The gradient-flow curve (rnnlm/gradflow.py): by hand on small cases, the same for fused and reference cells,
the same as the hand-written delta recursion, and the lecture's claim on fresh models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rnnlm.backprop import elman_backprop
from rnnlm.config import load_config
from rnnlm.errors import DataError, UsageError
from rnnlm.gradflow import gradient_flow, vanishing_lag, window_ends
from rnnlm.models import LanguageModel, build_model
from rnnlm.models.cells import LayerWeights

V = 11


def make_model(
    cell: str,
    nonlinearity: str = "tanh",
    impl: str = "fused",
    layers: int = 1,
    hidden: int = 8,
    seed: int = 0,
    *extra: str,
) -> LanguageModel:
    torch.manual_seed(seed)
    overrides = [
        f"model.cell={cell}",
        f"model.nonlinearity={nonlinearity}",
        f"model.impl={impl}",
        f"model.num_layers={layers}",
        f"model.hidden_size={hidden}",
        "model.embed_size=5",
        *extra,
    ]
    return build_model(V, load_config(None, overrides).model).double()


def random_ids(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(V, (length,), generator=torch.Generator().manual_seed(seed))


def weights(model: LanguageModel) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("layers", [1, 2])
def test_relu_rnn_with_half_the_identity_halves_the_gradient_at_each_lag(layers: int) -> None:
    """z_t > 0 at every step, so each Jacobian dh_t/dh_{t-1} = diag(f'(z_t)) W(hh) of the top layer is 0.5 I.
    Two layers: the bottom one's W(hh) = 0.9 I, a curve of another slope if the wrong layer were measured."""
    model = make_model("rnn", "relu", "fused", layers)
    with torch.no_grad():
        for k in range(layers):
            top = k == layers - 1
            model.get_parameter(f"rnn.weight_hh_l{k}").copy_((0.5 if top else 0.9) * torch.eye(8))
            model.get_parameter(f"rnn.weight_ih_l{k}").mul_(0.01)
            model.get_parameter(f"rnn.bias_ih_l{k}").fill_(1.0)
    flow = gradient_flow(model, random_ids(60), max_lag=30, positions=5, warmup=10)
    expected = [flow.norms[0] * 0.5 ** (lag - 1) for lag in flow.lags]
    assert flow.positions == 5 and flow.cell_norms is None
    torch.testing.assert_close(
        torch.tensor(flow.norms, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0
    )
    assert vanishing_lag(flow.lags, flow.norms) == 11  # 0.5^10 = 9.8e-4 is the first below 1e-3


def test_an_lstm_with_constant_gates_keeps_its_memory_by_the_forget_gate_alone() -> None:
    """W = U = 0: every gate is its bias's sigmoid, c_t = f c_{t-1} + i c~, so dJ_t/dc_{t-k} = f^k dJ_t/dc_t and
    h_{t-k} reaches nothing (its gradient is 0)."""
    model = make_model("lstm")
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_hh"):
            model.get_parameter(f"rnn.{name}_l0").zero_()
        model.get_parameter("rnn.bias_ih_l0").copy_(torch.linspace(-1, 1, 32, dtype=torch.float64))
        model.get_parameter("rnn.bias_ih_l0")[8:16] = 2.0  # gate order i, f, g, o: f = sigmoid(2)
    flow = gradient_flow(model, random_ids(40), max_lag=20, positions=3, warmup=5)
    forget = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    assert flow.cell_norms is not None and flow.norms == [0.0] * 20
    expected = flow.cell_norms[0] * forget ** torch.arange(20, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(flow.cell_norms, dtype=torch.float64), expected, rtol=1e-10, atol=0)


def test_positions_spread_over_the_whole_text() -> None:
    """Each t has max_lag + warmup tokens before it and its target after it: from 7 to 18 in 20 tokens."""
    assert window_ends(20, max_lag=5, warmup=2, positions=3) == [7, 12, 18]
    assert window_ends(20, max_lag=5, warmup=2, positions=50) == list(range(7, 19))


def test_tanh_rnn_equals_an_explicit_product_of_jacobians() -> None:
    """dJ_t/dh_{t-k} = (D_t D_{t-1} .. D_{t-k+1})^T dJ_t/dh_t with D_s = diag(1 - h_s^2) W(hh), written out."""
    lag = 9
    model = make_model("rnn", "tanh", "fused", 1, 8, 3)
    ids = random_ids(lag + 2, seed=1)
    w = weights(model)
    W_hh, W_ih = 2.0 * w["rnn.weight_hh_l0"], w["rnn.weight_ih_l0"]  # larger: the curve neither flat nor gone
    with torch.no_grad():
        model.get_parameter("rnn.weight_hh_l0").copy_(W_hh)
    bias = w["rnn.bias_ih_l0"] + w["rnn.bias_hh_l0"]
    h, jacobians = torch.zeros(8, dtype=torch.float64), []
    for token in ids[: lag + 1]:
        h = torch.tanh(W_ih @ w["embedding.weight"][token] + W_hh @ h + bias)
        jacobians.append(torch.diag(1 - h * h) @ W_hh)  # dh_s/dh_{s-1}
    U = w["decoder.weight"]
    probs = torch.softmax(U @ h + w["decoder.bias"], dim=0)
    grad = U.T @ (probs - torch.nn.functional.one_hot(ids[-1], V).double())  # dJ_t/dh_t
    product, expected = torch.eye(8, dtype=torch.float64), []
    for k in range(1, lag + 1):
        product = product @ jacobians[-k]  # D_t .. D_{t-k+1}
        expected.append(float((product.T @ grad).norm()))
    flow = gradient_flow(model, ids, max_lag=lag, positions=1, warmup=0)
    assert flow.positions == 1 and flow.lags == list(range(1, lag + 1))
    torch.testing.assert_close(
        torch.tensor(flow.norms, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0
    )
    assert expected[-1] < 0.5 * expected[0]  # a real decay, not a flat line


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu", "sigmoid"])
def test_the_elman_curve_is_the_hand_written_delta_recursions(nonlinearity: str) -> None:
    lag = 12
    model = make_model("rnn", nonlinearity, "reference", 1, 8, 4)
    ids = random_ids(lag + 2, seed=2)
    w = weights(model)
    layer = LayerWeights(*(w[f"rnn.{name}_l0"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    inputs = w["embedding.weight"][ids[: lag + 1]].unsqueeze(1)  # (T, 1, E)
    by_hand = elman_backprop(
        inputs,
        ids[1:].unsqueeze(1),
        torch.zeros(1, 8, dtype=torch.float64),
        layer,
        w["decoder.weight"],
        w["decoder.bias"],
        nonlinearity,
    )
    flow = gradient_flow(model, ids, max_lag=lag, positions=1, warmup=0)
    torch.testing.assert_close(
        torch.tensor(flow.norms, dtype=torch.float64), by_hand.last_step_norms[1:], rtol=1e-10, atol=0
    )


@pytest.mark.parametrize("cell,nonlinearity", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")])
def test_fused_and_reference_cells_give_the_same_curve_in_float64(cell: str, nonlinearity: str) -> None:
    fused = make_model(cell, nonlinearity, "fused", 2, 8, 5)
    reference = make_model(cell, nonlinearity, "reference", 2, 8, 6)
    reference.load_state_dict(fused.state_dict())
    ids = random_ids(80, seed=3)
    a, b = (gradient_flow(m, ids, max_lag=25, positions=6, warmup=8) for m in (fused, reference))
    assert a.positions == b.positions == 6
    assert set(a.to_json()) == {"lags", "norms", "positions"} | ({"cell_norms"} if cell == "lstm" else set())
    torch.testing.assert_close(torch.tensor(a.norms), torch.tensor(b.norms), rtol=1e-9, atol=0)
    assert (a.cell_norms is None) == (b.cell_norms is None) == (cell != "lstm")
    if a.cell_norms is not None and b.cell_norms is not None:
        torch.testing.assert_close(torch.tensor(a.cell_norms), torch.tensor(b.cell_norms), rtol=1e-9, atol=0)
        assert min(a.cell_norms) > 0


def test_a_fresh_lstm_keeps_its_gradient_longer_than_a_fresh_tanh_rnn(tiny_corpus: Path) -> None:
    """The lecture's "less vanishing gradient", on fresh models of one size (seed 0; float32 as trained)."""
    text = tiny_corpus.read_text()
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    curves = {}
    for cell in ("rnn", "lstm"):
        torch.manual_seed(0)
        config = load_config(
            None, [f"model.cell={cell}", "model.hidden_size=32", "model.embed_size=16", "model.num_layers=1"]
        ).model
        curves[cell] = gradient_flow(build_model(len(chars), config), ids, max_lag=40, positions=8, warmup=20)
    rnn, lstm = (curves[cell].norms[19] / curves[cell].norms[0] for cell in ("rnn", "lstm"))  # lag 20 / lag 1
    assert rnn < 1e-4 and lstm > 1e-2
    assert vanishing_lag(curves["rnn"].lags, curves["rnn"].norms) == 14
    assert vanishing_lag(curves["lstm"].lags, curves["lstm"].norms) is None  # not within 40 steps


def test_the_curve_is_the_mean_of_each_positions_own_curve() -> None:
    """Positions run side by side as batch columns; each column's curve is what it gives alone."""
    model, ids = make_model("gru", seed=8), random_ids(70, seed=4)
    together = gradient_flow(model, ids, max_lag=15, positions=4, warmup=0)
    ends = window_ends(70, 15, 0, 4)
    alone = [gradient_flow(model, ids[t - 15 : t + 2], max_lag=15, positions=1, warmup=0).norms for t in ends]
    assert together.positions == len(ends) == 4
    torch.testing.assert_close(
        torch.tensor(together.norms, dtype=torch.float64),
        torch.tensor(alone, dtype=torch.float64).mean(0),
        rtol=1e-10,
        atol=0,
    )


def test_the_model_is_measured_without_dropout_and_left_as_it_was() -> None:
    model = make_model("lstm", "tanh", "fused", 2, 8, 7, "model.dropout=0.5")
    model.train()
    ids = random_ids(50)
    first, second = (gradient_flow(model, ids, max_lag=10, positions=3, warmup=5) for _ in range(2))
    assert first == second
    assert model.training and all(p.grad is None for p in model.parameters())


def test_a_lag_longer_than_the_text_is_one_usage_error() -> None:
    assert gradient_flow(make_model("gru"), random_ids(42), max_lag=40).positions == 1  # the shortest text for 40
    with pytest.raises(UsageError) as error:
        gradient_flow(make_model("gru"), random_ids(41), max_lag=40)
    assert str(error.value) == (
        "a lag of 40 needs a text of at least 42 tokens; this one has 41 (give a longer text or a smaller lag)"
    )


def test_ids_the_model_never_saw_are_one_data_error() -> None:
    with pytest.raises(DataError, match="outside the model's vocabulary of 11"):
        gradient_flow(make_model("gru"), torch.tensor([1, 2, 3, V, 4, 5]), max_lag=2)


def test_vanishing_lag_is_the_first_lag_below_the_ratio() -> None:
    assert vanishing_lag([1, 2, 3, 4], [2.0, 0.1, 1e-3, 1e-6]) == 3
    assert vanishing_lag([1, 2], [2.0, 0.1]) is None
    with pytest.raises(UsageError, match="must start at lag 1"):
        vanishing_lag([2, 3], [1.0, 0.5])
