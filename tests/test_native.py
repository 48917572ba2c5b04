"""rnnlm/native: generation in C computes the stepper's numbers and draws by `choose`'s law."""

from __future__ import annotations

import ctypes
import math

import pytest
import torch
from helpers import TINY_MODEL, invoke

from rnnlm import native
from rnnlm.config import load_config
from rnnlm.data.tokenizers import CharTokenizer
from rnnlm.models import build_model
from rnnlm.sample import generate

TEXT = "to be or not to be, that is the question\n"
STACKS = {
    "lstm": ["model.cell=lstm"],
    "gru": ["model.cell=gru"],
    "tanh": ["model.cell=rnn", "model.nonlinearity=tanh"],
    "relu": ["model.cell=rnn", "model.nonlinearity=relu"],
}


def tiny_model(overrides: list[str], vocab: int = 23, seed: int = 0) -> torch.nn.Module:
    """Three layers, the top one narrower (output_size), so that every layer size and input size differ."""
    config = load_config(
        None,
        ["model.num_layers=3", "model.embed_size=7", "model.hidden_size=19", "model.output_size=11", *overrides],
    )
    torch.manual_seed(seed)
    model = build_model(vocab, config.model).eval()
    with torch.no_grad():  # larger weights than the default initialisation: gates far from 1/2, logits far apart
        for p in model.parameters():
            p.mul_(3.0)
    return model


def test_the_kernel_builds_here() -> None:
    """CI installs a C compiler: the C path is tested, not skipped."""
    assert native.library() is not None, native.why_not()


@pytest.mark.parametrize("cell", STACKS)
def test_each_step_reads_a_token_as_the_torch_stepper_does(cell: str) -> None:
    model = tiny_model(STACKS[cell])
    stepper, generator = model.stepper(), model.stepper().generator()
    assert generator is not None
    torch.manual_seed(1)
    state = tuple(torch.randn_like(s) for s in model.init_state(2, "cpu"))
    with torch.inference_mode():
        for tokens in torch.randint(0, 23, (30, 2)):  # teacher forcing: one token per call, from the same state
            drawn, c_state = generator(tokens, state, 1, 0.0, None)
            logits, state = stepper(tokens, state, normalized=False)
            for a, b in zip(state, c_state, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)  # float32 products summed in another order
            top2 = logits.topk(2).values
            clear = (top2[:, 0] - top2[:, 1]) > 1e-4  # a near tie may round either way
            assert torch.equal(drawn[0][clear], logits.argmax(-1)[clear])
    assert max(abs(s).max() for s in state) > 0.5  # the states are not near zero, where any cell agrees


def one_distribution_model(logits: torch.Tensor) -> torch.nn.Module:
    """A model whose logits are `logits` whatever it reads: a zero output weight, `logits` as the bias."""
    model = tiny_model(STACKS["lstm"], vocab=logits.numel())
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.copy_(logits)
    return model


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_a_draw_takes_the_token_whose_share_of_the_running_sum_holds_the_uniform(temperature: float) -> None:
    torch.manual_seed(2)
    logits = torch.randn(300) * 4  # probabilities from about 1e-10 to 0.2
    logits[17] = -200.0  # exp underflows in float32: never drawn
    generator = one_distribution_model(logits).stepper().generator()
    assert generator is not None
    weights = torch.softmax(logits.double() / temperature, 0)
    running = weights.cumsum(0)
    before = torch.cat([torch.zeros(1, dtype=torch.float64), running[:-1]])
    visible = (weights > 1e-6 * running[-1]).nonzero().squeeze(1)  # wide enough to aim at in float32
    midpoints = ((before + running) / 2 / running[-1])[visible]  # u inside each token's own interval
    state = model_state = one_distribution_model(logits).init_state(1, "cpu")
    drawn, _ = generator(torch.zeros(1, dtype=torch.long), state, len(visible), temperature, midpoints.view(-1, 1))
    assert torch.equal(drawn.squeeze(1), visible)
    ends, _ = generator(
        torch.zeros(1, dtype=torch.long), model_state, 2, temperature, torch.tensor([[0.0], [1 - 1e-12]])
    )
    assert ends.squeeze(1).tolist() == [0, int(weights.nonzero().max())]  # the first and last tokens of weight
    assert 17 not in visible.tolist()


def test_temperature_zero_takes_the_argmax() -> None:
    logits = torch.tensor([0.5, 3.0, -1.0, 3.0 - 1e-3, 2.0])
    generator = one_distribution_model(logits).stepper().generator()
    assert generator is not None
    state = one_distribution_model(logits).init_state(3, "cpu")
    drawn, _ = generator(torch.tensor([0, 1, 2]), state, 4, 0.0, None)
    assert drawn.tolist() == [[1, 1, 1]] * 4


def test_the_numbers_do_not_depend_on_the_thread_count() -> None:
    model = tiny_model(STACKS["lstm"], vocab=1000)
    generator = model.stepper().generator()
    assert generator is not None
    state = model.init_state(3, "cpu")
    uniforms = torch.rand(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        results.append(generator(torch.tensor([1, 2, 3]), state, 64, 1.0, uniforms))
    torch.set_num_threads(1)
    for drawn, final in results[1:]:
        assert torch.equal(drawn, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(final, results[0][1], strict=True))


@pytest.mark.parametrize("cell", STACKS)
@pytest.mark.parametrize("temperature", [1.0, 0.8, 0.0])
def test_generate_writes_the_text_torch_writes(cell: str, temperature: float, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = CharTokenizer(TEXT)
    model = tiny_model(STACKS[cell], vocab=tokenizer.vocab_size)
    texts = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("RNNLM_NATIVE", flag)
        texts[flag] = generate(
            model, tokenizer, prompt="to be", length=150, temperature=temperature, seed=5, num_samples=2
        )
    assert texts["1"] == texts["0"]
    first, second = texts["1"]
    assert len(first) == len("to be") + 150
    assert (first == second) == (temperature == 0)  # two samples differ unless both take the argmax


def test_only_plain_float32_full_softmax_stacks_get_a_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tiny_model(STACKS["gru"]).stepper().generator() is not None
    assert tiny_model(STACKS["gru"]).stepper(torch.bfloat16).generator() is None
    sigmoid = ["model.cell=rnn", "model.nonlinearity=sigmoid", "model.impl=reference"]  # no torch kernel
    assert tiny_model(sigmoid).stepper().generator() is None
    assert tiny_model(["model.cell=mingru"]).stepper().generator() is None
    adaptive = tiny_model(["tokenizer.kind=word", "model.softmax=adaptive", "model.cutoffs=[10]"], vocab=40)
    assert adaptive.stepper().generator() is None
    assert tiny_model(STACKS["lstm"]).double().stepper().generator() is None
    monkeypatch.setenv("RNNLM_NATIVE", "0")
    assert tiny_model(STACKS["gru"]).stepper().generator() is None
    assert native.why_not() == "RNNLM_NATIVE=0"


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 40, 1.0), (0.8, 0, 0.9), (1.3, 100, 0.7)])
def test_top_k_and_top_p_draw_from_the_candidates_choose_keeps(temperature: float, top_k: int, top_p: float) -> None:
    torch.manual_seed(4)
    logits = torch.randn(300) * 2
    generator = one_distribution_model(logits).stepper().generator()
    assert generator is not None
    weights = ((logits.double() - logits.max()) / temperature).exp()
    order = weights.argsort(descending=True)
    candidates = order[:top_k] if top_k else order
    total = weights[candidates].sum() if top_k else weights.sum()
    before = weights[candidates].cumsum(0) - weights[candidates]
    kept = candidates[before < top_p * total]  # the nucleus within the candidates, best first
    running = weights[kept].cumsum(0)
    midpoints = (running - weights[kept] / 2) / running[-1]  # u in the middle of each kept token's interval
    state = one_distribution_model(logits).init_state(1, "cpu")
    drawn, _ = generator(
        torch.zeros(1, dtype=torch.long), state, len(kept), temperature, midpoints.view(-1, 1), top_k, top_p
    )
    assert torch.equal(drawn.squeeze(1), kept)
    assert 3 < len(kept) < 300  # the restriction bites


@pytest.mark.parametrize(("top_k", "top_p"), [(5, 1.0), (0, 0.8), (3, 0.5)])
def test_restricted_samples_are_the_text_torch_writes(top_k: int, top_p: float, monkeypatch) -> None:
    tokenizer = CharTokenizer(TEXT)
    model = tiny_model(STACKS["gru"], vocab=tokenizer.vocab_size)
    texts = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("RNNLM_NATIVE", flag)
        texts[flag] = generate(model, tokenizer, prompt="or", length=150, top_k=top_k, top_p=top_p, seed=6)
    assert texts["1"] == texts["0"] and len(texts["1"][0]) == 152


def test_a_wide_nucleus_is_found_past_the_first_64_candidates() -> None:
    """A flat distribution: the nucleus holds most of 1,000 tokens, found through the 512- and 1,000-wide
    rounds (a quickselect and a sort), and every token of it can be drawn."""
    logits = torch.linspace(0.0, -0.5, 1000)[torch.randperm(1000, generator=torch.Generator().manual_seed(5))]
    generator = one_distribution_model(logits).stepper().generator()
    assert generator is not None
    weights = logits.double().exp()
    order = weights.argsort(descending=True)
    before = weights[order].cumsum(0) - weights[order]
    kept = order[before < 0.95 * weights.sum()]
    assert len(kept) > 512
    running = weights[kept].cumsum(0)
    midpoints = (running - weights[kept] / 2) / running[-1]
    state = one_distribution_model(logits).init_state(1, "cpu")
    drawn, _ = generator(torch.zeros(1, dtype=torch.long), state, len(kept), 1.0, midpoints.view(-1, 1), 0, 0.95)
    assert torch.equal(drawn.squeeze(1), kept)


def test_token_ids_outside_the_vocabulary_are_refused() -> None:
    model = tiny_model(STACKS["lstm"])
    generator = model.stepper().generator()
    assert generator is not None
    with pytest.raises(ValueError, match=r"\[0, 23\)"):
        generator(torch.tensor([23]), model.init_state(1, "cpu"), 1, 0.0, None)


def test_a_compiler_that_fails_leaves_generation_to_torch(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("RNNLM_CACHE", str(tmp_path))
    native.library.cache_clear()
    try:
        monkeypatch.setenv("CC", "false")
        assert native.library() is None
        assert "false failed" in (native.why_not() or "")
        tokenizer = CharTokenizer(TEXT)
        model = tiny_model(STACKS["lstm"], vocab=tokenizer.vocab_size)
        assert model.stepper().generator() is None
        assert len(generate(model, tokenizer, length=10, seed=1)[0]) == 10
        monkeypatch.delenv("CC")
        monkeypatch.setenv("PATH", str(tmp_path))  # no cc
        native.library.cache_clear()
        assert native.library() is None and native.why_not() == "no C compiler (cc) on PATH"
    finally:
        native.library.cache_clear()


def test_sample_says_after_its_text_when_the_kernel_could_not_be_built(
    tiny_corpus, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    trained = invoke("train", "--run-dir", run, f"data.corpus={tiny_corpus}", *TINY_MODEL, "train.batch_size=4",
                     "train.bptt=8", "train.epochs=0", "train.max_steps=2", "train.tensorboard=false")
    assert trained.exit_code == 0, trained.output
    sample = ("sample", run / "best.pt", "--prompt", "A", "--length", 30, "--seed", 1)
    native.library.cache_clear()
    try:
        fast = invoke(*sample)
        monkeypatch.setenv("RNNLM_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("CC", "false")
        native.library.cache_clear()
        slow = invoke(*sample)
        monkeypatch.setenv("RNNLM_NATIVE", "0")
        off = invoke(*sample)
    finally:
        native.library.cache_clear()
    assert fast.exit_code == slow.exit_code == off.exit_code == 0
    assert fast.output.startswith("A") and len(fast.output) == 1 + 30 + 1 and off.output == fast.output
    text, note = slow.output[: len(fast.output)], slow.output[len(fast.output) :]
    assert text == fast.output  # the same text, then one line saying why it came slower
    assert note == (
        "Note: sampled through torch, slower than rnnlm's sampler in C (2.6-2.9x for a PTB word model), which "
        "could not be built here: false failed (exit 1). Install a C compiler (gcc or clang) for it, or set "
        "RNNLM_NATIVE=0 to silence this.\n"
    )


def test_a_compiler_error_is_named_by_its_error_line(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    script = tmp_path / "cc"
    script.write_text("#!/bin/sh\necho 'generate.c:1:10: fatal error: math.h: No such file' >&2\n"
                      "echo 'compilation terminated.' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("RNNLM_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(script))
    native.library.cache_clear()
    try:
        assert native.failed() is None  # not wanted yet
        assert native.library() is None
        said = "cc failed (exit 1): generate.c:1:10: fatal error: math.h: No such file"
        assert native.why_not() == native.failed() == said
    finally:
        native.library.cache_clear()


def test_a_cached_library_that_does_not_load_is_built_again(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("RNNLM_CACHE", str(tmp_path))
    native.library.cache_clear()
    try:
        built = native._build()  # compiled, not loaded: rewriting a loaded library in place would crash us
        built.write_bytes(b"cut short")
        native.library.cache_clear()
        assert native.library() is not None
        assert built.stat().st_size > 1000 and not list((tmp_path / "native").glob("*.partial"))
    finally:
        native.library.cache_clear()


def test_the_draw_law_matches_exp_to_float_precision() -> None:
    """exp_nonpositive against math.exp: the weights a draw compares are off by a few float32 ulps at most."""
    logits = torch.linspace(-86.0, 0.0, 4001)
    model = one_distribution_model(logits)
    generator = model.stepper().generator()
    assert generator is not None
    exact = [math.exp(v) for v in logits.double().tolist()]
    total = math.fsum(exact)
    aims = [math.fsum(exact[:k]) + exact[k] / 2 for k in range(3990, 4001)]  # the likeliest tokens, mid-interval
    drawn, _ = generator(
        torch.zeros(1, dtype=torch.long),
        model.init_state(1, "cpu"),
        len(aims),
        1.0,
        torch.tensor(aims, dtype=torch.float64).view(-1, 1) / total,
    )
    assert drawn.squeeze(1).tolist() == list(range(3990, 4001))


def test_exp_sigmoid_and_tanh_are_within_two_float_ulps() -> None:
    """The kernel's own vectorisable exp, logistic function and tanh (libm's are one value at a time)."""
    lib = native.library()
    assert lib is not None

    def functions(x: torch.Tensor) -> list[torch.Tensor]:
        outputs = [torch.empty_like(x) for _ in range(3)]
        lib.rnnlm_functions(*(ctypes.c_void_p(t.data_ptr()) for t in (x, *outputs)), ctypes.c_int(x.numel()))
        return outputs

    x = torch.cat([torch.linspace(-20, 20, 400_001), torch.linspace(-87, -20, 10_001), torch.tensor([-1e-30])])
    exact = [x.double().clamp(max=0).exp(), torch.sigmoid(x.double()), torch.tanh(x.double())]
    for name, got, want in zip(("exp", "sigmoid", "tanh"), functions(x), exact, strict=True):
        relative = ((got.double() - want).abs() / want.abs()).max().item()
        assert relative < 2.5e-7, (name, relative)  # float32's unit in the last place is 1.2e-7 relative at most
    below, _, _ = functions(torch.tensor([-87.5, -100.0, -1e9]))
    assert below.tolist() == [0.0, 0.0, 0.0]  # where float32 has no normal number left
