import math

import pytest
import torch

from rnnlm.config import load_config
from rnnlm.data.tokenizers import CharTokenizer, WordVocabBuilder
from rnnlm.models import build_model
from rnnlm.models.lm import RNNLM
from rnnlm.sample import Uniforms, _inverse_cdf, choose, distribution, generate

TEXT = "to be or not to be, that is the question\n"


@pytest.fixture
def char_model():
    tokenizer = CharTokenizer(TEXT)
    torch.manual_seed(0)
    model = RNNLM(tokenizer.vocab_size, load_config(None, ["model.hidden_size=16", "model.embed_size=8"]).model)
    return model.eval(), tokenizer


def test_same_seed_same_text(char_model):
    model, tokenizer = char_model
    a = generate(model, tokenizer, prompt="to ", length=60, seed=7)
    b = generate(model, tokenizer, prompt="to ", length=60, seed=7)
    c = generate(model, tokenizer, prompt="to ", length=60, seed=8)
    assert a == b and a != c
    assert a[0].startswith("to ") and len(a[0]) == 63


def test_temperature_zero_is_greedy_argmax(char_model):
    model, tokenizer = char_model
    text = generate(model, tokenizer, prompt="be", length=20, temperature=0, seed=1)[0]
    ids = [tokenizer.boundary_id, *tokenizer.encode("be").tolist()]
    with torch.no_grad():
        for _ in range(20):
            log_probs, _ = model.prefill(torch.tensor(ids).unsqueeze(1), model.init_state(1))
            ids.append(int(log_probs.argmax()))
    assert text == tokenizer.decode(ids[1:])
    assert generate(model, tokenizer, prompt="be", length=20, temperature=0, seed=99)[0] == text
    assert generate(model, tokenizer, prompt="be", length=20, top_k=1, seed=5)[0] == text


def test_streamed_pieces_make_the_first_sample(char_model):
    model, tokenizer = char_model
    pieces = []
    texts = generate(model, tokenizer, prompt="or", length=30, seed=3, num_samples=3, on_text=pieces.append)
    assert "".join(pieces) == texts[0]
    assert len(texts) == 3 and len(set(texts)) > 1


def test_unknown_prompt_characters_read_as_unk(char_model):
    model, tokenizer = char_model
    assert tokenizer.unknown("tö bé") == ["é", "ö"]
    text = generate(model, tokenizer, prompt="tö bé", length=5, seed=1)[0]
    assert text.startswith("tö bé") and len(text) == 10


def test_word_samples_are_spaced_and_break_lines():
    builder = WordVocabBuilder()
    builder.add("the cat sat\non the mat\n")
    tokenizer = builder.build()
    torch.manual_seed(0)
    model = RNNLM(tokenizer.vocab_size, load_config(None, ["model.hidden_size=8", "model.embed_size=8"]).model).eval()
    text = generate(model, tokenizer, prompt="the cat", length=40, seed=2)[0]
    assert text.startswith("the cat ") and "  " not in text and " \n" not in text


def test_top_k_never_leaves_the_k_best():
    log_probs = torch.log_softmax(torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]), -1).expand(2000, -1)
    picks = choose(log_probs, 1.0, 2, 1.0, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1}


def test_top_p_keeps_the_smallest_set_holding_the_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    picks = choose(probs.log().expand(4000, -1), 1.0, 0, 0.75, torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1}  # 0.5 < 0.75 <= 0.5 + 0.3
    share = (picks == 0).float().mean().item()
    assert share == pytest.approx(0.5 / 0.8, abs=0.03)


def test_temperature_sharpens_the_distribution():
    log_probs = torch.log(torch.tensor([[0.6, 0.4]])).expand(20000, -1)
    picks = choose(log_probs, 0.5, 0, 1.0, torch.Generator().manual_seed(0))
    expected = 0.6**2 / (0.6**2 + 0.4**2)  # p^(1/T), renormalised
    assert (picks == 0).float().mean().item() == pytest.approx(expected, abs=0.01)
    assert math.isclose(expected, 0.6923, abs_tol=1e-4)


def test_top_p_over_a_large_vocabulary_equals_sorting_it_all():
    """The nucleus is found by a growing top-k; it must be the one a full sort gives, flat rows too."""
    generator = torch.Generator().manual_seed(3)
    peaked = torch.randn(3, 5000, generator=generator) * 4
    flat = torch.randn(2, 5000, generator=generator) * 0.1  # the nucleus needs thousands of tokens
    log_probs = torch.log_softmax(torch.cat([peaked, flat]), dim=-1)
    for row in log_probs:
        probs, order = row.exp().sort(descending=True)
        nucleus = set(order[(probs.cumsum(0) - probs) < 0.9].tolist())
        picks = choose(row.expand(3000, -1), 1.0, 0, 0.9, torch.Generator().manual_seed(0))
        assert set(picks.tolist()) <= nucleus
        if len(nucleus) < 100:  # few enough that 3,000 draws reach each one
            assert set(picks.tolist()) == nucleus
        best = order[0].item()
        share = probs[0].item() / probs[: len(nucleus)].sum().item()
        assert (picks == best).float().mean().item() == pytest.approx(share, abs=0.03)


ONE_STEP_KINDS = [
    ["model.cell=lstm", "model.num_layers=2"],
    ["model.cell=gru", "model.num_layers=2"],
    ["model.cell=rnn", "model.nonlinearity=relu"],
    ["model.cell=rnn", "model.nonlinearity=sigmoid", "model.impl=reference"],
    ["model.cell=lstm", "model.num_layers=2", "model.output_size=8"],  # layer by layer, unequal sizes
    ["model.cell=gru", "model.impl=reference"],
    ["model.softmax=adaptive", "model.cutoffs=[10,20]", "tokenizer.kind=word"],
    ["model.bidirectional=true", "model.num_layers=2"],  # its forward stack
]


def small_double_model(overrides):
    """A float64 model of one kind (30 tokens), its fast stepper, 3 tokens and a random state to start from."""
    torch.manual_seed(0)
    config = load_config(None, ["model.hidden_size=16", "model.embed_size=8", *overrides]).model
    model = build_model(30, config).double().eval()
    return model, model.stepper(), torch.tensor([3, 0, 29]), tuple(torch.randn_like(s) for s in model.init_state(3))


@pytest.mark.parametrize("overrides", ONE_STEP_KINDS)
def test_the_one_step_generator_computes_what_model_step_does(overrides):
    model, fast, tokens, state = small_double_model(overrides)
    fast_state = state
    with torch.inference_mode():
        for _ in range(4):  # each feeding its own state and its own argmax back
            expected, state = model.step(tokens, state)
            log_probs, fast_state = fast(tokens, fast_state)
            torch.testing.assert_close(log_probs, expected, rtol=1e-12, atol=1e-12)
            for a, b in zip(fast_state, state):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
            tokens = expected.argmax(dim=-1)


def test_bf16_weights_halve_the_bytes_and_stay_close_to_float32():
    torch.manual_seed(0)
    model = RNNLM(50, load_config(None, ["model.hidden_size=32", "model.num_layers=2"]).model).eval()
    exact, half = model.stepper(), model.stepper(torch.bfloat16)
    assert half.embedding.dtype == half.stack.layers[0].weight.dtype == half.decoder.weight.dtype == torch.bfloat16
    tokens, state = torch.tensor([1, 7]), model.init_state(2)
    half_state = state
    with torch.inference_mode():
        for _ in range(10):
            expected, state = exact(tokens, state)
            log_probs, half_state = half(tokens, half_state)
            assert log_probs.dtype == half_state[0].dtype == torch.float32
            assert (log_probs - expected).abs().max() < 0.05  # nats; bf16 keeps 8 bits of mantissa
            tokens = expected.argmax(dim=-1)


@pytest.mark.parametrize("vocab", [1, 9, 10, 1000])
def test_the_decoder_split_over_threads_gives_the_logits_of_the_whole(vocab):
    from rnnlm.models.softmax import LinearLogProbs

    torch.manual_seed(0)
    decoder = torch.nn.Linear(12, vocab).double()
    hidden = torch.randn(3, 12, dtype=torch.float64)
    expected = decoder(hidden)
    for parts in (1, 2, 3, 7):
        split = LinearLogProbs(decoder, torch.float64, parts=parts)
        assert split.parts == min(parts, vocab) and split.weight.shape[0] == split.parts
        torch.testing.assert_close(split.scores(hidden), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(split(hidden), torch.log_softmax(expected, -1), rtol=1e-12, atol=1e-12)
    assert LinearLogProbs(decoder, torch.float64).parts == min(torch.get_num_threads(), vocab)


def test_bf16_sampling_draws_text(char_model):
    model, tokenizer = char_model
    text = generate(model, tokenizer, prompt="to ", length=40, seed=7, weights=torch.bfloat16)[0]
    assert text.startswith("to ") and len(text) == 43


def test_draws_follow_the_distribution_and_never_take_an_impossible_token():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    log_probs = probs.clamp(min=1e-30).log().expand(20_000, -1)  # 20,000 rows drawn at once
    drawn = choose(log_probs, 1.0, 0, 1.0, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(drawn, minlength=6).double() / 20_000
    assert frequencies[1] == frequencies[5] == 0  # 1e-30: possible in principle, never in 20,000 draws
    torch.testing.assert_close(frequencies, probs.double(), rtol=0, atol=0.012)  # ~4 standard errors


def reference_distribution(log_probs, temperature, top_k, top_p):
    """softmax(log_probs / T) over each row, cut to the top k, then to the nucleus, by sorting every row."""
    probs, order = torch.softmax(log_probs / temperature, dim=-1).sort(dim=-1, descending=True)
    if top_k:
        probs[:, top_k:] = 0
    probs = probs / probs.sum(dim=-1, keepdim=True)
    probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, 0)
    return torch.zeros_like(probs).scatter(-1, order, probs / probs.sum(dim=-1, keepdim=True))


@pytest.mark.parametrize("overrides", ONE_STEP_KINDS)
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (0.8, 0, 0.6),
                                                     (1.0, 8, 0.7)])
def test_the_sampler_draws_from_model_step_distribution(overrides, temperature, top_k, top_p):
    """generate samples from the fast stepper's logits; normalised with temperature, top-k and top-p they
    are the distribution model.step's log-probabilities give, to float64 rounding."""
    model, fast, tokens, state = small_double_model(overrides)
    fast_state = state
    with torch.inference_mode():
        for _ in range(3):
            expected, state = model.step(tokens, state)
            scores, fast_state = fast(tokens, fast_state, normalized=False)
            probs, candidates = distribution(scores, temperature, top_k, top_p)
            drawn = probs if candidates is None else torch.zeros_like(scores).scatter(-1, candidates, probs)
            want = reference_distribution(expected, temperature, top_k, top_p)
            torch.testing.assert_close(drawn / drawn.sum(dim=-1, keepdim=True), want, rtol=0, atol=1e-12)
            assert ((want > 0).sum(dim=-1) < 30).all() if (top_k or top_p < 1) else (want > 0).all()
            tokens = expected.argmax(dim=-1)


def test_a_draw_is_the_first_token_whose_running_sum_passes_the_uniform():
    weights = torch.tensor([2.0, 0.0, 3.0, 5.0]) * torch.rand(500, 1) + torch.tensor([0.0, 0.0, 0.0, 1e-3])
    picks = _inverse_cdf(weights, torch.Generator().manual_seed(0))
    point = torch.rand(500, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    running = weights.double().cumsum(dim=-1)
    expected = (running <= point * running[:, -1:]).sum(dim=-1)  # how many running sums the point passes
    assert torch.equal(picks, expected) and 1 not in picks.tolist() and set(picks.tolist()) == {0, 2, 3}


def test_uniforms_drawn_in_blocks_are_the_numbers_drawn_call_by_call():
    uniforms, plain = Uniforms(torch.Generator().manual_seed(4), rows=3, block=5), torch.Generator().manual_seed(4)
    for _ in range(12):  # across two block boundaries
        assert torch.equal(uniforms(3), torch.rand(3, 1, generator=plain, dtype=torch.float64))
    with pytest.raises(ValueError, match="3"):
        uniforms(2)


def test_a_shorter_text_is_the_start_of_a_longer_one(char_model):
    model, tokenizer = char_model
    for samples in (1, 2):
        short = generate(model, tokenizer, prompt="to ", length=50, seed=5, num_samples=samples)
        long = generate(model, tokenizer, prompt="to ", length=150, seed=5, num_samples=samples)  # draws 3 blocks
        assert all(b.startswith(a) for a, b in zip(short, long, strict=True))


@pytest.mark.parametrize("cell,nonlinearity,impl,kernel", [
    ("lstm", "tanh", "fused", True), ("gru", "tanh", "fused", True), ("rnn", "tanh", "fused", True),
    ("rnn", "relu", "reference", True), ("rnn", "sigmoid", "reference", False),
])
def test_torch_one_step_kernels_compute_the_cells_equations(cell, nonlinearity, impl, kernel):
    """Without a record, the stepper runs torch's one-step kernel where there is one; with a record, the
    cell's own equations: the same state, to float64 rounding."""
    torch.manual_seed(1)
    overrides = [f"model.cell={cell}", f"model.nonlinearity={nonlinearity}", f"model.impl={impl}",
                 "model.num_layers=2", "model.hidden_size=16", "model.embed_size=8"]
    model = build_model(30, load_config(None, overrides).model).double().eval()
    fast = model.stepper()
    assert (fast.stack.kernel is not None) == kernel
    assert model.stepper(torch.bfloat16).stack.kernel is None  # bf16 weights, a state in the model's dtype
    state = tuple(torch.randn_like(s) for s in model.init_state(3))
    tokens = torch.tensor([4, 5, 6])
    with torch.inference_mode():
        log_probs, new = fast(tokens, state)
        record: list = []
        recorded_log_probs, recorded = fast(tokens, state, record)
    assert len(record) == 2
    torch.testing.assert_close(log_probs, recorded_log_probs, rtol=0, atol=1e-12)
    for a, b in zip(new, recorded, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
