"""Dynamic evaluation (rnnlm/dynamic.py): causal, on a copy of the weights, better on text it adapts to."""

import hashlib

import numpy as np
import pytest
import torch
from helpers import tiny_config

from rnnlm.cache import CacheSettings
from rnnlm.checkpoint import load_model
from rnnlm.config import load_config
from rnnlm.data.corpus import Split
from rnnlm.dynamic import DynamicSettings, PrecisionRefused, gradient_statistics
from rnnlm.errors import UsageError
from rnnlm.evaluate import evaluate
from rnnlm.models.lm import RNNLM
from rnnlm.stream import evaluate_stream, score_stream
from rnnlm.train import Trainer


def model_and_ids(n=400, vocab=17, warm=True):
    torch.manual_seed(0)
    model = RNNLM(vocab, load_config(None, ["model.hidden_size=12", "model.embed_size=12"]).model).eval()
    if warm:
        model.start_states = tuple(torch.randn(4, 12) * 0.5 for _ in model.init_state(1))
    return model, np.random.default_rng(0).integers(0, vocab, n).astype(np.uint16)


def per_token(model, ids, **settings):
    return np.concatenate([s.log_probs for s in score_stream(model, [ids], boundary_id=3, **settings)])


@pytest.mark.parametrize("method", ["sgd", "rms"])
def test_a_token_is_scored_before_any_update_that_saw_it(method):
    model, ids = model_and_ids()
    statistics = gradient_statistics(model, ids, segment=5, tokens=200)
    dynamic = DynamicSettings(method, lr=0.5 if method == "sgd" else 1e-2, segment=5)
    settings = dict(dynamic=dynamic, statistics=statistics, cache=CacheSettings(size=30, interpolation=0.2))
    changed = ids.copy()
    changed[262:] = (changed[262:] + 1) % 17  # from the middle of a segment, after the warm start's span
    head, other = per_token(model, ids, **settings), per_token(model, changed, **settings)
    assert np.array_equal(head[:262], other[:262])
    assert not np.array_equal(head[262:], other[262:])
    assert not np.allclose(head, per_token(model, ids), atol=1e-3)  # the updates did change later scores


def test_every_token_once_and_a_tiny_step_changes_nothing():
    model, ids = model_and_ids(n=300, warm=False)
    split = Split(ids, 300, 300)
    static = evaluate(model, split, boundary_id=3)
    adapted = evaluate_stream(model, split, boundary_id=3, dynamic=DynamicSettings("sgd", lr=1e-12, decay=0, segment=7))
    assert adapted.tokens == 300
    assert adapted.nll == pytest.approx(static.nll, rel=1e-6)


@pytest.mark.parametrize("method", ["sgd", "rms"])
def test_it_adapts_to_the_text_it_reads(method):
    model, _ = model_and_ids(warm=False)
    rng = np.random.default_rng(1)
    ids = np.where(rng.random(360) < 0.8, 5, rng.integers(0, 17, 360)).astype(np.uint16)  # token 5 four times in five
    split = Split(ids, len(ids), len(ids))
    statistics = gradient_statistics(model, ids, segment=5, tokens=300)
    dynamic = DynamicSettings(method, lr=1.0 if method == "sgd" else 3e-3, decay=0.0, segment=5)
    static = evaluate_stream(model, split, boundary_id=3)
    adapted = evaluate_stream(model, split, boundary_id=3, dynamic=dynamic, statistics=statistics)
    assert static.loss == pytest.approx(np.log(17), abs=0.05)
    assert adapted.loss < static.loss - 1.0


def test_the_checkpoint_and_the_model_stay_as_they_were(tiny_corpus, tmp_path):
    trainer = Trainer(tiny_config(tiny_corpus), tmp_path / "run")
    trainer.setup()
    trainer.fit()
    trainer.close()
    path = tmp_path / "run" / "best.pt"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(path)
    before = [p.detach().clone() for p in loaded.model.parameters()]
    ids = loaded.tokenizer.encode(tiny_corpus.read_text()[:400])
    statistics = gradient_statistics(loaded.model, ids, segment=8, tokens=200)
    result = evaluate_stream(loaded.model, Split(ids, 400, 400), boundary_id=loaded.tokenizer.boundary_id,
                             dynamic=DynamicSettings(lr=1e-2, segment=8), statistics=statistics,
                             cache=CacheSettings(size=50))
    assert result.tokens == 400
    assert all(torch.equal(a, b) for a, b in zip(before, loaded.model.parameters()))
    assert all(p.grad is None for p in loaded.model.parameters())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_gradient_statistics_are_mean_squared_gradients():
    model, ids = model_and_ids(warm=False)
    statistics = gradient_statistics(model, ids, segment=5, tokens=50, pieces=1)
    inputs, targets = torch.from_numpy(ids[:6].astype(np.int64)).unsqueeze(1)[:-1], None
    state = model.init_state(1)
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    stretch = torch.from_numpy(ids[:51].astype(np.int64))  # the one piece starts at 0 and holds 50 tokens
    for i in range(0, 50, 5):
        inputs, targets = stretch[i: i + 5].unsqueeze(1), stretch[i + 1: i + 6].unsqueeze(1)
        out = model(inputs, targets, state)
        grads = torch.autograd.grad(out.nll / out.tokens, list(model.parameters()))
        for (name, _), grad in zip(model.named_parameters(), grads):
            expected[name] += grad ** 2 / 10
        state = tuple(s.detach() for s in out.state)
    for name, value in expected.items():
        assert torch.allclose(statistics[name], value, rtol=1e-5, atol=1e-12), name
    assert all(p.grad is None for p in model.parameters())


def test_bf16_weights_are_refused_in_one_line():
    model, ids = model_and_ids(warm=False)
    model.to(torch.bfloat16)
    with pytest.raises(PrecisionRefused) as caught:
        evaluate_stream(model, Split(ids, 400, 400), boundary_id=3, dynamic=DynamicSettings("sgd", lr=0.1))
    assert "bfloat16" in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, UsageError)


@pytest.mark.parametrize("settings", [dict(method="adam"), dict(lr=0.0), dict(lr=float("inf")), dict(decay=1.5),
                                      dict(segment=0), dict(epsilon=0.0)])
def test_bad_settings_are_one_line(settings):
    with pytest.raises(UsageError) as caught:
        DynamicSettings(**settings)
    assert "\n" not in str(caught.value) and "dynamic evaluation" in str(caught.value)


def test_rms_needs_its_statistics():
    model, ids = model_and_ids(warm=False)
    with pytest.raises(UsageError, match="gradient statistics"):
        evaluate_stream(model, Split(ids, 400, 400), boundary_id=3, dynamic=DynamicSettings("rms"))
