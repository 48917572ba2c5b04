"""Every model build_model makes keeps the model contract (rnnlm/models/contract.py), in numbers."""

import ast
from pathlib import Path

import pytest
import torch

from rnnlm.config import load_config
from rnnlm.ids import PAD
from rnnlm.models import HeadScore, LanguageModel, build_model
from rnnlm.models.cells import GRUCell, LayerWeights, LSTMCell, make_cell

V = 30
CELLS = [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu"), ("rnn", "sigmoid"),
         ("mingru", "tanh"), ("minlstm", "tanh")]  # the min cells' own checks: tests/test_mincells.py
KINDS = [(cell, nonlinearity, impl, bidirectional, softmax)
         for cell, nonlinearity in CELLS for impl in ("fused", "reference")
         for bidirectional, softmax in ((False, "full"), (True, "full"), (False, "adaptive"))
         if not (nonlinearity == "sigmoid" and impl == "fused")]  # torch's fused RNN has no sigmoid
IDS = ["-".join(str(part) for part in kind) for kind in KINDS]


def make(cell, nonlinearity, impl, bidirectional, softmax, *extra):
    overrides = [f"model.cell={cell}", f"model.nonlinearity={nonlinearity}", f"model.impl={impl}",
                 f"model.bidirectional={str(bidirectional).lower()}", f"model.softmax={softmax}",
                 "model.num_layers=2", "model.embed_size=6", "model.hidden_size=8", "model.init=uniform",
                 "model.init_range=0.5", *extra]
    if softmax == "adaptive":
        overrides += ["model.cutoffs=[10,20]", "tokenizer.kind=word"]
    torch.manual_seed(0)
    return build_model(V, load_config(None, overrides).model)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_forward_returns_typed_scores_and_a_state_in_the_declared_layout(kind):
    cell, _, _, bidirectional, _ = kind
    model = make(*kind).eval()
    assert isinstance(model, LanguageModel) and model.dtype == torch.float32
    layout = model.state_layout
    assert layout.names == (("h", "c") if cell == "lstm" else ("h",)) and layout.sizes == (8, 8)
    state = model.init_state(3)
    assert len(state) == 2 * layout.per_layer
    assert all(s.shape == (3, 8) and s.dtype == torch.float32 and not s.any() for s in state)
    inputs, targets = torch.randint(0, V, (5, 3)), torch.randint(0, V, (5, 3))
    targets[3:, 2] = PAD
    out = model(inputs, targets, state)
    assert out.nll.dim() == 0 and out.nll.item() > 0 and out.tokens.item() == 13
    assert [s.shape for s in out.state] == [s.shape for s in state]
    if bidirectional:  # of s_0 .. s_5 (s_0 .. s_3 in the short column): those with a token after / on each side
        assert isinstance(out.backward, HeadScore) and isinstance(out.infill, HeadScore)
        assert out.backward.tokens.item() == 5 + 5 + 3 and out.infill.tokens.item() == 4 + 4 + 2
        assert sorted(out.heads()) == ["backward", "infill"]
    else:
        assert out.backward is None and out.infill is None and out.heads() == {}
        torch.testing.assert_close(out.training_objective(), out.nll / 13)
    double = model.double()
    assert double.dtype == torch.float64 and all(s.dtype == torch.float64 for s in double.init_state(2))


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_prefill_then_steps_read_what_one_encode_pass_reads(kind):
    model = make(*kind).double().eval()
    tokens = torch.randint(0, V, (6, 2))
    start = tuple(torch.randn_like(s) for s in model.init_state(2))
    with torch.inference_mode():
        hidden, final = model.encode(tokens, start)  # (6, 2, H)
        expected = model.log_probs(hidden.reshape(12, -1)).view(6, 2, V)
        log_probs, state = model.prefill(tokens[:3], start)
        torch.testing.assert_close(log_probs, expected[2], rtol=0, atol=1e-12)
        for t in range(3, 6):
            log_probs, state = model.step(tokens[t], state)
            torch.testing.assert_close(log_probs, expected[t], rtol=0, atol=1e-12)
    assert log_probs.shape == (2, V) and log_probs.exp().sum(-1).sub(1).abs().max() < 1e-12
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_the_fast_stepper_computes_what_model_step_does(kind):
    model = make(*kind).double().eval()
    fast = model.stepper()
    tokens = torch.tensor([3, 0, 29])
    state = fast_state = tuple(torch.randn_like(s) for s in model.init_state(3))
    with torch.inference_mode():
        for _ in range(4):  # each feeding its own state and its own argmax back
            expected, state = model.step(tokens, state)
            log_probs, fast_state = fast(tokens, fast_state)
            torch.testing.assert_close(log_probs, expected, rtol=0, atol=1e-12)
            for a, b in zip(fast_state, state):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
            tokens = expected.argmax(dim=-1)


def test_a_smaller_top_layer_is_in_the_layout_and_the_stepper():
    model = make("lstm", "tanh", "fused", False, "full", "model.output_size=6", "model.tie_weights=true").double()
    assert model.state_layout.sizes == (8, 6)
    assert [s.shape[1] for s in model.init_state(1)] == [8, 8, 6, 6]
    state = model.init_state(2)
    with torch.inference_mode():
        expected, _ = model.step(torch.tensor([1, 2]), state)
        log_probs, _ = model.stepper()(torch.tensor([1, 2]), state)
    torch.testing.assert_close(log_probs, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell,nonlinearity", CELLS)
def test_recorded_gates_reproduce_the_new_state(cell, nonlinearity):
    model = make(cell, nonlinearity, "reference", False, "full").double().eval()
    state = tuple(torch.randn_like(s) for s in model.init_state(3))
    record: list = []
    with torch.inference_mode():
        _, new = model.stepper()(torch.tensor([4, 5, 6]), state, record)
    assert len(record) == 2  # one per layer, bottom first
    layout = model.state_layout
    for k, gates in enumerate(record):
        before, after = layout.layer(state, k), layout.layer(new, k)
        torch.testing.assert_close(gates.state, after, rtol=0, atol=0)
        if cell == "lstm":
            torch.testing.assert_close(gates.c, gates.f * before[1] + gates.i * gates.g, rtol=0, atol=1e-14)
            torch.testing.assert_close(gates.h, gates.o * gates.c.tanh(), rtol=0, atol=1e-14)
            assert all(0 < g.min() and g.max() < 1 for g in (gates.i, gates.f, gates.o))
        elif cell == "gru":
            torch.testing.assert_close(gates.h, gates.z * before[0] + (1 - gates.z) * gates.n, rtol=0, atol=1e-14)
            assert all(0 < g.min() and g.max() < 1 for g in (gates.z, gates.r))
    if cell.startswith("min"):
        return  # their gates against the paper's equations: tests/test_mincells.py
    # the fast step's gates are the reference cell's, from the same equations
    x = model.embedding.weight[torch.tensor([4, 5, 6])]
    reference = make_cell(cell, nonlinearity).gates(x, layout.layer(state, 0), model.rnn.layer(0))
    for a, b in zip(record[0], reference):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", [GRUCell(), LSTMCell()], ids=["gru", "lstm"])
def test_the_gates_are_the_lecture_equations_gate_by_gate(cell):
    """The cells compute all gates in one product; each gate is still its own W x + U h + b."""
    torch.manual_seed(2)
    B, In, H, G = 2, 3, 4, cell.gate_count
    shapes = [(G * H, In), (G * H, H), (G * H,), (G * H,)]
    w = LayerWeights(*(torch.randn(*shape, dtype=torch.float64) for shape in shapes))
    x = torch.randn(B, In, dtype=torch.float64)
    state = tuple(torch.randn(B, H, dtype=torch.float64) for _ in cell.state_names)
    gates = cell.gates(x, state, w)
    W, U, b, d = (t.chunk(G) for t in w.all())

    def pre(k):  # gate k's own affine maps
        return x @ W[k].T + b[k] + state[0] @ U[k].T + d[k]

    if isinstance(cell, LSTMCell):  # torch's order i, f, g, o
        torch.testing.assert_close(gates.f, torch.sigmoid(pre(1)), rtol=0, atol=1e-14)
        torch.testing.assert_close(gates.g, torch.tanh(pre(2)), rtol=0, atol=1e-14)
    else:  # r, z, n; the new memory gates U h + b_U by r
        torch.testing.assert_close(gates.z, torch.sigmoid(pre(1)), rtol=0, atol=1e-14)
        new = torch.tanh(x @ W[2].T + b[2] + gates.r * (state[0] @ U[2].T + d[2]))
        torch.testing.assert_close(gates.n, new, rtol=0, atol=1e-14)


def test_bf16_stepper_reads_bf16_weights_and_keeps_the_state_in_the_models_dtype():
    model = make("gru", "tanh", "fused", False, "full").eval()
    half = model.stepper(torch.bfloat16)
    assert half.embedding.dtype == half.decoder.weight.dtype == torch.bfloat16
    assert {t.dtype for layer in half.stack.layers for t in (layer.weight, layer.weight_hh)} == {torch.bfloat16}
    with torch.inference_mode():
        log_probs, state = half(torch.tensor([1, 2]), model.init_state(2))
        expected, _ = model.step(torch.tensor([1, 2]), model.init_state(2))
    assert log_probs.dtype == state[0].dtype == torch.float32
    assert 0 < (log_probs - expected).abs().max() < 0.05  # rounded, not wrong


def test_models_never_import_the_data_package():
    models = Path(__file__).resolve().parents[1] / "rnnlm" / "models"
    imported = set()
    for path in models.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "rnnlm.ids" in imported and not [name for name in imported if name.startswith("rnnlm.data")]
