import math

import numpy as np
import pytest
import torch

from rnnlm.config import load_config
from rnnlm.data.corpus import Split
from rnnlm.evaluate import EvalResult, evaluate
from rnnlm.models.lm import RNNLM


def model_and_split(n=103, vocab=17):
    torch.manual_seed(0)
    model = RNNLM(vocab, load_config(None, ["model.hidden_size=12", "model.embed_size=12"]).model)
    ids = np.random.default_rng(0).integers(0, vocab, n).astype(np.uint16)
    return model, Split(ids, chars=2 * n, bytes=3 * n)


@pytest.mark.parametrize("batch_size,bptt", [(1, 256), (1, 7), (4, 5), (10, 3), (200, 4)])
def test_every_token_is_scored_once(batch_size, bptt):
    model, split = model_and_split()
    torch.nn.init.zeros_(model.decoder.weight)
    torch.nn.init.zeros_(model.decoder.bias)
    result = evaluate(model, split, boundary_id=0, batch_size=batch_size, bptt=bptt)
    assert result.tokens == 103
    assert result.nll == pytest.approx(103 * math.log(17), rel=1e-6)


def test_window_length_does_not_change_a_full_context_score():
    model, split = model_and_split()
    a = evaluate(model, split, boundary_id=3, batch_size=1, bptt=256)
    b = evaluate(model, split, boundary_id=3, batch_size=1, bptt=4)
    assert a.nll == pytest.approx(b.nll, rel=1e-6)


def test_evaluation_leaves_training_mode_and_weights_alone():
    model, split = model_and_split()
    model.train()
    before = [p.clone() for p in model.parameters()]
    evaluate(model, split, boundary_id=0, batch_size=2, bptt=8)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bits_arithmetic_on_a_hand_checked_example():
    result = EvalResult(nll=100 * math.log(2), tokens=50, chars=200, bytes=400)
    assert result.loss == pytest.approx(2 * math.log(2))
    assert result.ppl == pytest.approx(4.0)
    assert result.bits_per_token == pytest.approx(2.0)
    assert result.bits_per_char == pytest.approx(0.5)
    assert result.bits_per_byte == pytest.approx(0.25)
    assert set(result.to_dict()) >= {"loss", "ppl", "bits_per_token", "bits_per_char", "tokens", "chars"}
