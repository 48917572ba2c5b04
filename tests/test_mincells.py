"""minGRU and minLSTM (rnnlm/models/mincells.py): the paper's equations, the fused scans against the
step-by-step cells in float64, state carried across windows, and the cells through train, sample, eval."""

import json
import math

import pytest
import torch
from helpers import invoke, tiny_config, train_run

from rnnlm.checkpoint import load_model
from rnnlm.config import load_config
from rnnlm.errors import ConfigError
from rnnlm.models import build_model
from rnnlm.models.mincells import MinGRUCell, MinStack, g, pairwise_scan
from rnnlm.sample import generate

KINDS = [(cell, activation) for cell in ("mingru", "minlstm") for activation in ("g", "identity")]
IDS = [f"{cell}-{activation}" for cell, activation in KINDS]


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def paper_g(v):
    return v + 0.5 if v >= 0 else sigmoid(v)


@pytest.mark.parametrize("cell,activation", KINDS, ids=IDS)
def test_one_step_is_the_papers_equations_unit_by_unit(cell, activation):
    torch.manual_seed(1)
    B, In, H = 2, 3, 2
    stack = MinStack(cell, [In, H], activation).double()
    weight, bias = stack.layer(0)
    x, h_prev = torch.randn(B, In, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    with torch.no_grad():
        out, (h,) = stack(x.unsqueeze(0), (h_prev,))
    candidate = paper_g if activation == "g" else (lambda v: v)
    for b in range(B):
        for u in range(H):

            def pre(gate, b=b, u=u):  # gate's own row of W x + b, as a plain number
                row = gate * H + u
                return sum(weight[row, j].item() * x[b, j].item() for j in range(In)) + bias[row].item()

            if cell == "mingru":  # z, h~; h = (1 - z) h + z h~
                z = sigmoid(pre(0))
                expected = (1 - z) * h_prev[b, u].item() + z * candidate(pre(1))
            else:  # f, i, h~; f' = f / (f + i), i' = i / (f + i); h = f' h + i' h~
                f, i = sigmoid(pre(0)), sigmoid(pre(1))
                expected = f / (f + i) * h_prev[b, u].item() + i / (f + i) * candidate(pre(2))
            assert h[b, u].item() == pytest.approx(expected, abs=1e-13)
    torch.testing.assert_close(out[0], h, rtol=0, atol=0)


def test_g_is_positive_and_continuous():
    x = torch.linspace(-40, 40, 8001, dtype=torch.float64)
    assert g(x).min() > 0 and g(torch.tensor(0.0)).item() == 0.5 and g(torch.tensor(-1e-9)).item() == pytest.approx(0.5)
    assert [paper_g(v) for v in (-2.0, 0.0, 3.0)] == pytest.approx(g(torch.tensor([-2.0, 0.0, 3.0])).tolist())


@pytest.mark.parametrize("length", [1, 2, 3, 5, 6, 64, 100])  # odd lengths peel a step at some level
def test_the_pairwise_scan_is_the_recurrence(length):
    torch.manual_seed(length)
    a, b = torch.rand(length, 2, 3, dtype=torch.float64), torch.randn(length, 2, 3, dtype=torch.float64)
    h = h0 = torch.randn(2, 3, dtype=torch.float64)
    expected = []
    for t in range(length):
        h = a[t] * h + b[t]
        expected.append(h)
    torch.testing.assert_close(pairwise_scan(a, b, h0), torch.stack(expected), rtol=0, atol=1e-14)


@pytest.mark.parametrize("cell,activation", KINDS, ids=IDS)
def test_the_fused_scan_equals_the_step_by_step_cells_in_float64(cell, activation):
    """150 steps (odd lengths at two levels of halving); three layers of unequal sizes; a random start state."""
    torch.manual_seed(2)
    fused = MinStack(cell, [5, 7, 7, 6], activation, fused=True).double()
    reference = MinStack(cell, [5, 7, 7, 6], activation, fused=False).double()
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(150, 3, 5, dtype=torch.float64)
    start = tuple(torch.randn(3, size, dtype=torch.float64) for size in (7, 7, 6))
    results = []
    for stack in (fused, reference):
        inputs, state = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in start)
        out, final = stack(inputs, state)
        loss = (out * torch.linspace(-1, 1, 6, dtype=torch.float64)).sum() + sum(f.square().sum() for f in final)
        grads = torch.autograd.grad(loss, [inputs, *state, *stack.parameters()])
        results.append((out, final, grads))
    (out_f, final_f, grads_f), (out_r, final_r, grads_r) = results
    torch.testing.assert_close(out_f, out_r, rtol=0, atol=1e-10)
    for a, b in zip([*final_f, *grads_f], [*final_r, *grads_r], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert all(grad.abs().max() > 1e-3 for grad in grads_f)  # every input, state and weight really matters


@pytest.mark.parametrize("cell,activation", KINDS, ids=IDS)
def test_two_windows_with_the_carried_state_equal_one_long_window(cell, activation):
    torch.manual_seed(3)
    stack = MinStack(cell, [4, 6, 6], activation).double()
    x = torch.randn(90, 2, 4, dtype=torch.float64)
    with torch.no_grad():
        whole, whole_final = stack(x, stack.init_state(2, "cpu", torch.float64))
        first, carried = stack(x[:37], stack.init_state(2, "cpu", torch.float64))
        second, final = stack(x[37:], carried)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, whole_final, rtol=0, atol=1e-12)
    assert whole[0].abs().max() > 0  # from the zero start the paper's positive h_0 is not needed


def test_the_fused_scan_keeps_float32_close_over_a_long_window():
    """1,024 steps of gates that forget fast and slow: the float32 scan stays within float32's rounding of
    the exact recurrence (a log-space scan over the whole window errs by about 2e-3 on these numbers)."""
    torch.manual_seed(0)
    cell = MinGRUCell("g")
    pre = torch.randn(1024, 4, 16, dtype=torch.float64) * 3
    pre[..., :8] += 2.0  # z near 1: a = 1 - z small
    h = h0 = torch.randn(4, 8, dtype=torch.float64)
    exact = []
    for pre_t in pre:
        h = cell.equations(pre_t, h).h
        exact.append(h)
    approx = pairwise_scan(*cell.coefficients(pre.float()), h0.float())
    torch.testing.assert_close(approx.double(), torch.stack(exact), rtol=0, atol=1e-5)


def make(cell, activation, impl="fused", *extra):
    overrides = [f"model.cell={cell}", f"model.min_activation={activation}", f"model.impl={impl}", "model.num_layers=2",
                 "model.embed_size=6", "model.hidden_size=8", *extra]
    torch.manual_seed(4)
    return build_model(30, load_config(None, overrides).model)


@pytest.mark.parametrize("cell,activation", KINDS, ids=IDS)
def test_stepper_step_and_one_forward_pass_agree_and_the_record_holds_the_gates(cell, activation):
    model = make(cell, activation).double().eval()
    tokens = torch.randint(0, 30, (5, 3))
    start = tuple(torch.randn_like(s) for s in model.init_state(3))
    fast = model.stepper()
    with torch.inference_mode():
        hidden, final = model.encode(tokens, start)
        expected = model.log_probs(hidden.reshape(15, -1)).view(5, 3, 30)
        state = fast_state = start
        for t in range(5):
            log_probs, state = model.step(tokens[t], state)
            record: list = []
            fast_log_probs, fast_state = fast(tokens[t], fast_state, record)
            torch.testing.assert_close(log_probs, expected[t], rtol=0, atol=1e-12)
            torch.testing.assert_close(fast_log_probs, expected[t], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast_state, final, rtol=0, atol=1e-12)
    assert [type(gates).__name__ for gates in record] == [f"Min{cell[3:].upper()}Gates"] * 2
    top = record[-1]
    assert torch.equal(top.h, fast_state[-1])
    if cell == "minlstm":  # the normalised gates share out one unit of weight
        torch.testing.assert_close(top.f + top.i, torch.ones_like(top.f), rtol=0, atol=1e-15)
    else:
        assert top.z.min() > 0 and top.z.max() < 1
    assert (top.n.min() > 0) == (activation == "g")  # g keeps the candidate positive; the linear one is W x


def test_bf16_autocast_runs_the_scan_in_the_states_dtype():
    model = make("minlstm", "g").eval()
    tokens = torch.randint(0, 30, (70, 2))
    with torch.no_grad():
        exact = model(tokens, tokens, model.init_state(2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(tokens, tokens, model.init_state(2))
    assert half.state[0].dtype == torch.float32 and half.nll.item() != exact.nll.item()
    assert half.nll.item() == pytest.approx(exact.nll.item(), rel=0.01)


def test_bf16_stepper_reads_bf16_weights_and_keeps_the_state_in_the_models_dtype():
    model = make("mingru", "g").eval()
    half = model.stepper(torch.bfloat16)
    assert {t.dtype for layer in half.stack.layers for t in layer} == {torch.bfloat16}
    with torch.inference_mode():
        log_probs, state = half(torch.tensor([1, 2]), model.init_state(2))
        expected, _ = model.step(torch.tensor([1, 2]), model.init_state(2))
    assert log_probs.dtype == state[0].dtype == torch.float32
    assert 0 < (log_probs - expected).abs().max() < 0.05  # rounded, not wrong


def test_weight_drop_is_refused_for_cells_without_recurrent_weights():
    with pytest.raises(ConfigError, match="model.weight_drop drops recurrent weights, which model.cell mingru"):
        load_config(None, ["model.cell=mingru", "model.weight_drop=0.3"])


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_train_sample_and_eval_through_the_cli(tiny_corpus, tmp_path, cell, impl):
    run_dir = tmp_path / "run"
    result = invoke("train", "--run-dir", run_dir, f"data.corpus={tiny_corpus}", "model.embed_size=8",
                    "model.hidden_size=16", "model.num_layers=2", f"model.cell={cell}", f"model.impl={impl}",
                    "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=30",
                    "train.tensorboard=false", "data.valid_fraction=0.1", "data.test_fraction=0.1",
                    "optim.name=adam", "optim.lr=0.01", "--seed", 3)
    assert result.exit_code == 0, result.output
    assert "Done: 30 steps" in result.output and f"model {cell}" in result.output
    loaded = load_model(run_dir / "best.pt")
    assert loaded.config.model.cell == cell and isinstance(loaded.model.rnn, MinStack)
    assert loaded.model.rnn.fused == (impl == "fused")
    prompt = tiny_corpus.read_text()[:3]
    samples = [invoke("sample", run_dir / "best.pt", "--prompt", prompt, "--length", 20, "--seed", 5)
               for _ in range(2)]
    assert samples[0].exit_code == 0 and samples[0].output == samples[1].output
    assert samples[0].output.startswith(prompt) and len(samples[0].output) == 3 + 20 + 1  # and a newline
    losses = []
    for other in ("fused", "reference"):  # the one checkpoint runs on both stacks
        scored = invoke("eval", run_dir / "best.pt", "--split", "valid", "--json", "--impl", other, "--device", "cpu")
        assert scored.exit_code == 0, scored.output
        losses.append(json.loads(scored.output)["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] < math.log(loaded.tokenizer.vocab_size)


def test_resume_equals_uninterrupted(tiny_corpus, tmp_path):
    common = ["model.cell=minlstm", "model.num_layers=2", "model.dropout=0.3", "optim.lr=2.0"]
    full, _ = train_run(tiny_config(tiny_corpus, *common, "train.max_steps=24"), tmp_path / "full")
    train_run(tiny_config(tiny_corpus, *common, "train.max_steps=12"), tmp_path / "split")
    resumed, _ = train_run(tiny_config(tiny_corpus, *common, "train.max_steps=24"), tmp_path / "split", resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    generated = [generate(trainer.model.eval(), trainer.tokenizer, prompt="a", length=15, seed=1)
                 for trainer in (full, resumed)]
    assert generated[0] == generated[1]


# ---- the paper's layout: residual stream, LayerNorm, MLP (model.min_residual, min_norm, min_mlp) ----

LAYOUT = ["model.min_residual=true", "model.min_norm=true", "model.min_mlp=2"]


def layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt((x - mean).square().mean(-1, keepdim=True) + 1e-5) * weight + bias


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_a_block_is_x_plus_h_then_plus_the_mlp_and_the_output_is_normalised(cell):
    """One layer, one step, written out from the module docstring's equations with plain tensor algebra."""
    torch.manual_seed(5)
    H = 4
    stack = MinStack(cell, [H, H], "g", residual=True, norm=True, mlp=3).double()
    with torch.no_grad():  # norms away from their identity start, so that a missing one shows
        for p in stack.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x, h_prev = torch.randn(2, H, dtype=torch.float64), torch.randn(2, H, dtype=torch.float64)
    with torch.no_grad():
        out, (h,) = stack(x.unsqueeze(0), (h_prev,))
        weight, bias = stack.layer(0)
        u = layer_norm(x, stack.norm_l0.weight, stack.norm_l0.bias)
        expected_h = stack.cell.equations(u @ weight.T + bias, h_prev).h
        y = x + expected_h
        inner = layer_norm(y, stack.mlp_norm_l0.weight, stack.mlp_norm_l0.bias) @ stack.mlp_in_l0.weight.T
        inner = inner + stack.mlp_in_l0.bias
        gelu = 0.5 * inner * (1 + torch.erf(inner / math.sqrt(2)))
        y = y + gelu @ stack.mlp_out_l0.weight.T + stack.mlp_out_l0.bias
        expected = layer_norm(y, stack.norm_out.weight, stack.norm_out.bias)
    torch.testing.assert_close(h, expected_h, rtol=0, atol=1e-13)  # the state is still the cell's h
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-13)
    assert stack.mlp_in_l0.weight.shape == (3 * H, H)


@pytest.mark.parametrize("layout", [(True, True, 2), (True, False, 0), (False, True, 0), (False, False, 3)],
                         ids=["all", "residual", "norm", "mlp"])
@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_the_layouts_fused_scan_equals_the_step_by_step_cells_in_float64(cell, layout):
    residual, norm, mlp = layout
    torch.manual_seed(6)
    sizes = [6, 6, 6, 6]
    fused = MinStack(cell, sizes, "g", True, residual=residual, norm=norm, mlp=mlp).double()
    reference = MinStack(cell, sizes, "g", False, residual=residual, norm=norm, mlp=mlp).double()
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(75, 2, 6, dtype=torch.float64)
    start = tuple(torch.randn(2, 6, dtype=torch.float64) for _ in range(3))
    results = []
    for stack in (fused, reference):
        inputs, state = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in start)
        out, final = stack(inputs, state)
        loss = (out * torch.linspace(-1, 1, 6, dtype=torch.float64)).sum() + sum(f.square().sum() for f in final)
        results.append((out, final, torch.autograd.grad(loss, [inputs, *state, *stack.parameters()])))
    (out_f, final_f, grads_f), (out_r, final_r, grads_r) = results
    for a, b in zip([out_f, *final_f, *grads_f], [out_r, *final_r, *grads_r], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert len(grads_f) == 1 + 3 + 2 * 3 + (2 * 3 + 2 if norm else 0) + (4 * 3 + (2 * 3 if norm else 0) if mlp else 0)
    assert all(grad.abs().max() > 1e-4 for grad in grads_f)  # every weight of the layout takes part


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_the_layout_carries_its_state_across_windows_and_generates_through_the_stepper(cell):
    model = make(cell, "g", "fused", "model.embed_size=8", *LAYOUT).double().eval()
    tokens = torch.randint(0, 30, (40, 3))
    start = model.init_state(3)
    fast = model.stepper()
    with torch.inference_mode():
        whole, whole_final = model.encode(tokens, start)
        first, carried = model.encode(tokens[:17], start)
        second, final = model.encode(tokens[17:], carried)
        expected = model.log_probs(whole.reshape(120, -1)).view(40, 3, 30)
        state = start
        for t in range(40):
            log_probs, state = fast(tokens[t], state)
            torch.testing.assert_close(log_probs, expected[t], rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(final, whole_final, rtol=0, atol=1e-12)
    torch.testing.assert_close(state, whole_final, rtol=0, atol=1e-12)
    assert not torch.allclose(whole[-1], whole_final[-1])  # the output layer reads the stream, not the top h


def test_the_layouts_dropout_acts_in_training_only_and_the_stepper_is_a_snapshot():
    model = make("minlstm", "g", "fused", "model.embed_size=8", "model.dropout=0.5", *LAYOUT)
    tokens = torch.randint(0, 30, (12, 2))
    stepper = model.eval().stepper()
    with torch.no_grad():
        evaluated = [model(tokens, tokens, model.init_state(2)).nll.item() for _ in range(2)]
        model.train()
        trained = [model(tokens, tokens, model.init_state(2)).nll.item() for _ in range(2)]
        before, _ = stepper(tokens[0], model.init_state(2))
        model.rnn.mlp_out_l0.bias.add_(1.0)  # training goes on after the stepper was made
        after, _ = stepper(tokens[0], model.init_state(2))
    assert evaluated[0] == evaluated[1] and trained[0] != trained[1] and evaluated[0] not in trained
    assert torch.equal(before, after)


def test_uniform_init_leaves_the_layer_norms_at_one_and_zero():
    model = make("mingru", "g", "fused", "model.embed_size=8", "model.init=uniform", *LAYOUT)
    norms = {name: p for name, p in model.rnn.named_parameters() if "norm" in name}
    assert len(norms) == 2 * 2 * 2 + 2  # norm_l{k}, mlp_norm_l{k} (weight, bias) per layer, norm_out
    for name, p in norms.items():
        assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)), name
    assert model.rnn.mlp_in_l1.weight.abs().max() <= 0.1  # the MLP's weights follow model.init_range


@pytest.mark.parametrize("overrides,message", [
    (["model.cell=lstm", "model.min_residual=true", "model.min_mlp=4"],
     "model.min_residual, model.min_mlp applies to model.cell mingru or minlstm (got lstm)"),
    (["model.cell=mingru", "model.min_residual=true", "model.embed_size=64", "model.hidden_size=128"],
     "model.min_residual adds each layer's input to its output: it needs model.embed_size == model.hidden_size "
     "(got 64, 128)"),
    (["model.cell=minlstm", "model.min_mlp=-1"], "model.min_mlp must be 0 (none) or more (got -1)"),
])
def test_layout_options_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)


def test_the_layout_trains_resumes_exactly_and_samples_through_the_cli(tiny_corpus, tmp_path):
    common = ["model.cell=mingru", "model.num_layers=2", "model.embed_size=16", "model.hidden_size=16",
              "model.dropout=0.2", *LAYOUT]
    full, _ = train_run(tiny_config(tiny_corpus, *common, "train.max_steps=20"), tmp_path / "full")
    train_run(tiny_config(tiny_corpus, *common, "train.max_steps=10"), tmp_path / "split")
    resumed, _ = train_run(tiny_config(tiny_corpus, *common, "train.max_steps=20"), tmp_path / "split", resume=True)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert any("mlp_out_l1" in name for name in full.model.state_dict())
    checkpoint = tmp_path / "full" / "best.pt"
    samples = [invoke("sample", checkpoint, "--prompt", "a", "--length", 15, "--seed", 2) for _ in range(2)]
    assert samples[0].exit_code == 0 and samples[0].output == samples[1].output, samples[0].output
    losses = [json.loads(invoke("eval", checkpoint, "--split", "valid", "--json", "--impl", impl).output)["loss"]
              for impl in ("fused", "reference")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
