"""The continuous cache (rnnlm/cache.py) and the one-stream scorer it runs in (rnnlm/stream.py)."""

import math

import numpy as np
import pytest
import torch

from rnnlm.cache import CacheSettings, NeuralCache
from rnnlm.config import load_config
from rnnlm.data.corpus import Split
from rnnlm.errors import UsageError
from rnnlm.evaluate import evaluate
from rnnlm.models.lm import RNNLM
from rnnlm.stream import evaluate_stream, score_stream


def model_and_split(n=700, vocab=17, warm=False):
    torch.manual_seed(0)
    model = RNNLM(vocab, load_config(None, ["model.hidden_size=12", "model.embed_size=12"]).model).eval()
    if warm:  # 4 start states: the first 256 tokens are scored under their mixture
        model.start_states = tuple(torch.randn(4, 12) * 0.5 for _ in model.init_state(1))
    ids = np.random.default_rng(0).integers(0, vocab, n).astype(np.uint16)
    return model, Split(ids, chars=2 * n, bytes=3 * n)


@pytest.mark.parametrize("warm", [False, True])
def test_lambda_zero_scores_exactly_what_evaluate_does(warm):
    model, split = model_and_split(warm=warm)
    static = evaluate(model, split, boundary_id=3)
    for cache in (None, CacheSettings(size=50, theta=0.3, interpolation=0.0)):
        streamed = evaluate_stream(model, split, boundary_id=3, cache=cache)
        assert streamed.tokens == static.tokens == 700
        assert streamed.loss == pytest.approx(static.loss, rel=1e-6, abs=1e-6)
    zero = evaluate(model, split, boundary_id=3, start="zero")
    assert evaluate_stream(model, split, boundary_id=3, start="zero").nll == pytest.approx(zero.nll, rel=1e-6)
    assert (zero.nll != pytest.approx(static.nll, rel=1e-7)) == warm  # the warm start's mixture was scored


def test_the_mixture_on_a_hand_checked_example():
    settings = CacheSettings(size=2, theta=0.5, interpolation=0.25)
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]).unsqueeze(1)  # (T=4, K=1, H=2)
    uniform = torch.full((4, 1, 3), -math.log(3))
    targets = torch.tensor([2, 0, 2, 1])  # pairs (h_0, 2), (h_1, 0), (h_2, 2), (h_3, 1)
    token, mixed = NeuralCache(settings).mix(hidden, uniform, targets, distributions=True)
    mixed = mixed[:, 0].exp()
    assert token[:, 0].exp().tolist() == pytest.approx(mixed[torch.arange(4), targets].tolist())
    assert mixed[0].tolist() == pytest.approx([1 / 3] * 3)  # nothing stored yet: the model alone
    assert mixed[1].tolist() == pytest.approx([0.75 / 3, 0.75 / 3, 0.75 / 3 + 0.25])  # only (h_0, 2): h_1.h_0 = 0
    # t = 2 reads (h_0, 2) and (h_1, 0), both with h_2 . h_i = 1
    assert mixed[2].tolist() == pytest.approx([0.25 + 0.25 / 2, 0.25, 0.25 + 0.25 / 2])
    # t = 3 reads the last 2 only: (h_1, 0) with score 0 and (h_2, 2) with 0.5 * 2 = 1
    w0, w2 = 1 / (1 + math.e), math.e / (1 + math.e)
    assert mixed[3].tolist() == pytest.approx([0.25 + 0.25 * w0, 0.25, 0.25 + 0.25 * w2])
    assert mixed.sum(-1).tolist() == pytest.approx([1.0] * 4)


def test_a_prediction_never_reads_its_own_target_or_later_ones():
    model, split = model_and_split(n=300, warm=True)
    changed = split.ids.copy()
    changed[150:] = (changed[150:] + 5) % 17
    cache = CacheSettings(size=40, theta=1.0, interpolation=0.3)

    def rows(ids):
        scored = list(score_stream(model, [ids], boundary_id=3, cache=cache, distributions=True))
        return np.concatenate([s.log_probs for s in scored]), np.concatenate([s.entropy for s in scored])

    (head, entropy), (other, other_entropy) = rows(split.ids), rows(changed)
    assert np.array_equal(head[:150], other[:150])
    assert np.array_equal(entropy[:151], other_entropy[:151])  # token 150's prediction too: only its score differs
    assert head[150] != other[150]


def test_the_cache_helps_on_repeated_text():
    model, _ = model_and_split(vocab=200)  # p_model about 1/200; p_cache at least about 1/40 after one period
    ids = np.tile(np.random.default_rng(1).permutation(200)[:40], 10).astype(np.uint16)
    split = Split(ids, 400, 400)
    static = evaluate_stream(model, split, boundary_id=3)
    cached = evaluate_stream(model, split, boundary_id=3, cache=CacheSettings(size=40, theta=1.0, interpolation=0.5))
    assert static.loss == pytest.approx(math.log(200), abs=0.05)
    assert cached.loss < static.loss - 0.5


def test_chunks_of_any_size_score_the_same():
    model, split = model_and_split(warm=True)
    cache = CacheSettings(size=30)
    whole = np.concatenate([s.log_probs for s in score_stream(model, [split.ids], boundary_id=3, cache=cache)])
    pieces = [split.ids[i: i + 7] for i in range(0, 700, 7)]
    chunked = np.concatenate([s.log_probs for s in score_stream(model, pieces, boundary_id=3, cache=cache)])
    assert np.array_equal(whole, chunked)


@pytest.mark.parametrize("settings", [dict(size=0), dict(theta=-1.0), dict(theta=math.nan), dict(interpolation=1.0),
                                      dict(interpolation=-0.1)])
def test_bad_settings_are_one_line(settings):
    with pytest.raises(UsageError) as caught:
        CacheSettings(**settings)
    assert "\n" not in str(caught.value) and "cache" in str(caught.value)
