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


def test_scoring_a_checkpoint_names_its_source_and_marks_unknown_text_lossy(tiny_corpus, tmp_path):
    from helpers import invoke
    from rnnlm.checkpoint import load_model
    from rnnlm.errors import DataError
    from rnnlm.evaluate import eval_source, score_checkpoint

    assert invoke("train", "--run-dir", tmp_path / "run", f"data.corpus={tiny_corpus}", "train.max_steps=2",
                  "model.hidden_size=8", "model.embed_size=8", "model.num_layers=1", "train.batch_size=2",
                  "train.bptt=8", "train.epochs=0", "train.tensorboard=false", "data.valid_fraction=0.1",
                  "data.test_fraction=0.1").exit_code == 0
    loaded = load_model(tmp_path / "run" / "best.pt")
    odd, empty = tmp_path / "odd.txt", tmp_path / "empty.txt"
    odd.write_text("All: \u20ac\u20ac\n", encoding="utf-8")  # the euro sign is not in the vocabulary
    empty.write_text("")
    settings = dict(batch_size=1, bptt=16, device="cpu", precision="fp32", start="zero")
    split, source = eval_source(loaded, split="valid", text=None)
    assert source == f"{tiny_corpus} (valid split)"
    clean = score_checkpoint(loaded, split, source, **settings)
    assert (clean.unk_tokens, clean.lossy, clean.result.tokens) == (0, False, len(split.ids))
    unknown = score_checkpoint(loaded, *eval_source(loaded, split="test", text=odd), **settings)
    assert (unknown.source, unknown.unk_tokens, unknown.lossy) == (str(odd), 2, True)
    with pytest.raises(DataError, match="holds no text to score"):
        eval_source(loaded, split="test", text=empty)
