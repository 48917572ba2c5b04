import hashlib
import json
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


# ---- `rnnlm eval --cache / --dynamic / --tune` (rnnlm/adaptation.py) ----

ZERO = ["--device", "cpu", "--start", "zero"]  # a zero start reads the tiny texts 16 times faster than a warm one


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny trained checkpoints (unidirectional, bidirectional) on a tiny corpus, shared by the tests below."""
    from conftest import TINY_TEXT
    from helpers import TINY_MODEL, invoke

    folder = tmp_path_factory.mktemp("adapted")
    corpus = folder / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RNNLM_CACHE", str(folder / "cache"))
        for name, extra in (("lm", []), ("bi", ["model.bidirectional=true"])):
            assert invoke("train", "--run-dir", folder / name, f"data.corpus={corpus}", *TINY_MODEL,
                          "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=6",
                          "train.tensorboard=false", "data.valid_fraction=0.1", "data.test_fraction=0.1",
                          *extra).exit_code == 0
    return {"lm": folder / "lm" / "best.pt", "bi": folder / "bi" / "best.pt", "corpus": corpus}


def eval_json(*args):
    from helpers import invoke

    result = invoke("eval", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_with_both_methods_is_the_librarys_stream_and_says_its_settings(checkpoints):
    from rnnlm.cache import CacheSettings
    from rnnlm.checkpoint import load_model
    from rnnlm.dynamic import DynamicSettings
    from rnnlm.evaluate import eval_source
    from rnnlm.stream import evaluate_stream

    path = checkpoints["lm"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    static = eval_json(path, *ZERO)
    both = eval_json(path, *ZERO, "--cache", "--cache-size", 40, "--cache-theta", 0.5, "--cache-lambda", 0.2,
                     "--dynamic", "--dynamic-lr", 0.3, "--dynamic-segment", 8, "--dynamic-decay", 0.01)
    loaded = load_model(path)
    split, _ = eval_source(loaded, split="test", text=None)
    expected = evaluate_stream(loaded.model, split, boundary_id=loaded.tokenizer.boundary_id, start="zero",
                               cache=CacheSettings(40, 0.5, 0.2), dynamic=DynamicSettings("sgd", 0.3, 0.01, 8))
    assert both["loss"] == pytest.approx(expected.loss, rel=1e-9) and both["loss"] != pytest.approx(static["loss"])
    assert both["tokens"] == static["tokens"] == len(split.ids)  # every token scored once
    assert (static["method"], static["cache"], static["dynamic"], static["tune"]) == ("static", None, None, None)
    assert both["method"] == "cache+dynamic" and both["tune"] is None
    assert both["cache"] == {"size": 40, "theta": 0.5, "lambda": 0.2}
    assert both["dynamic"] == {"method": "sgd", "lr": 0.3, "decay": 0.01, "segment": 8}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the checkpoint file is never modified


def test_a_bidirectional_model_is_read_by_its_forward_stack(checkpoints):
    static = eval_json(checkpoints["bi"], *ZERO)
    cached = eval_json(checkpoints["bi"], *ZERO, "--cache", "--cache-lambda", 0)  # p = p_model exactly
    assert cached["loss"] == pytest.approx(static["loss"], rel=1e-6) and cached["tokens"] == static["tokens"]
    assert "backward" in static and "backward" not in cached and cached["method"] == "cache"


def test_tune_picks_the_grid_point_with_the_lowest_validation_loss(checkpoints):
    from rnnlm.adaptation import DEFAULT_LR, LAMBDAS, LEARNING_RATES, THETAS, Methods, tune, validation_start
    from rnnlm.cache import CacheSettings
    from rnnlm.checkpoint import load_model
    from rnnlm.dynamic import DynamicSettings
    from rnnlm.stream import evaluate_stream

    loaded = load_model(checkpoints["lm"])
    valid = validation_start(loaded, 120)
    asked = Methods(CacheSettings(size=30), DynamicSettings("sgd", segment=10))
    tuned = tune(loaded, asked, valid, source="valid", statistics=None, device="cpu", start="zero")

    def loss(cache, dynamic=None):
        return evaluate_stream(loaded.model, valid, boundary_id=loaded.tokenizer.boundary_id, start="zero",
                               cache=cache, dynamic=dynamic).loss

    caches = {CacheSettings(30, theta, share): loss(CacheSettings(30, theta, share)) for theta in THETAS
              for share in LAMBDAS}
    cache = min(caches, key=caches.__getitem__)
    assert len(set(caches.values())) > 1  # the choice is a real one
    assert [value for _, value in tuned.losses[:len(caches)]] == pytest.approx(list(caches.values()), rel=1e-9)
    tried = {point.dynamic.lr: value for point, value in tuned.losses[len(caches):] if point.dynamic is not None}
    for lr, value in tried.items():  # every rate tried with the chosen cache, as evaluated on its own
        assert value == pytest.approx(loss(cache, DynamicSettings("sgd", lr, segment=10)), rel=1e-9)
    lr, rates = min(tried, key=tried.__getitem__), LEARNING_RATES["sgd"]
    assert tuned.methods == Methods(cache, DynamicSettings("sgd", lr, segment=10))
    assert DEFAULT_LR["sgd"] in tried and set(rates[max(rates.index(lr) - 1, 0): rates.index(lr) + 2]) <= set(tried)
    assert tuned.tokens == 120


def test_the_learning_rate_walk_stops_at_a_local_minimum_and_reads_each_point_once():
    from rnnlm.adaptation import downhill

    calls = []

    def loss(x):
        calls.append(x)
        return (x - 2) ** 2 if x != 6 else -1.0  # a lower point beyond a higher one is not reached

    assert downhill((0, 1, 2, 3, 4, 5, 6), 4, loss) == 2
    assert sorted(calls) == [1, 2, 3, 4, 5]
    assert downhill((0, 1, 2, 3, 4, 5, 6), 5, loss) == 6  # to a neighbour that is lower, and the grid's end


def test_tune_on_the_command_line_reports_what_it_chose_and_scores_with_it(checkpoints, tmp_path):
    from rnnlm.adaptation import LAMBDAS, THETAS

    text = tmp_path / "other.txt"
    text.write_text("Speak, speak.\nAll:\nResolved. resolved.\n" * 4)
    tuned = eval_json(checkpoints["lm"], *ZERO, "--text", text, "--cache", "--cache-size", 30, "--tune",
                      "--tune-tokens", 100)
    assert tuned["tune"]["source"] == f"{checkpoints['corpus']} (valid split)" and tuned["tune"]["tokens"] == 100
    assert tuned["tune"]["points"] == len(THETAS) * len(LAMBDAS)
    chosen = tuned["cache"]
    again = eval_json(checkpoints["lm"], *ZERO, "--text", text, "--cache", "--cache-size", 30, "--cache-theta",
                      chosen["theta"], "--cache-lambda", chosen["lambda"])
    assert again["loss"] == tuned["loss"] and again["tokens"] == tuned["tokens"] == len(text.read_text())


@pytest.mark.parametrize("args,fragment", [
    (["--cache", "--tune", "--split", "valid"], "never on the split being reported"),
    (["--cache", "--batch-size", 4], "one stream"),
    (["--dynamic", "--batch-size", 2], "one stream"),
    (["--dynamic", "--precision", "bf16"], "fp32"),
    (["--cache", "--cache-size", 0], "cache size"),
    (["--cache", "--cache-lambda", 1], "cache lambda"),
    (["--cache", "--cache-theta", "nan"], "cache theta"),
    (["--dynamic", "--dynamic-lr", 0], "learning rate"),
    (["--dynamic", "--dynamic-lr", "inf"], "learning rate"),
    (["--dynamic", "--dynamic-segment", 0], "segment"),
    (["--dynamic", "--bptt", 50], "--dynamic-segment"),
    (["--cache-theta", 0.5], "--cache-theta applies with --cache"),
    (["--dynamic-lr", 0.5], "--dynamic-lr applies with --dynamic"),
    (["--tune"], "give one of them"),
    (["--cache", "--tune", "--cache-lambda", 0.2], "--tune chooses --cache-lambda"),
    (["--cache", "--tune", "--tune-tokens", 0], "--tune-tokens"),
])
def test_settings_that_do_not_fit_are_one_line_exit_2(checkpoints, args, fragment):
    from helpers import invoke

    result = invoke("eval", checkpoints["lm"], *ZERO, *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and fragment in result.output and result.output.count("\n") == 1


def test_rms_without_the_training_split_is_one_line(checkpoints, tmp_path):
    import shutil

    from helpers import invoke

    moved = tmp_path / "alone.pt"
    shutil.copy(checkpoints["lm"], moved)
    text = tmp_path / "other.txt"
    text.write_text("Speak, speak.\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rnnlm.adaptation.STATISTICS_TOKENS", 100)
        works = invoke("eval", moved, *ZERO, "--text", text, "--dynamic", "--dynamic-method", "rms")
        assert works.exit_code == 0, works.output
        assert "dynamic evaluation (rms, lr 0.0001, decay 0.005, segment 20)" in works.output
        checkpoints["corpus"].rename(tmp_path / "gone.txt")
        try:
            result = invoke("eval", moved, *ZERO, "--text", text, "--dynamic", "--dynamic-method", "rms")
        finally:
            (tmp_path / "gone.txt").rename(checkpoints["corpus"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: RMS dynamic evaluation reads its gradient statistics from the training")
    assert result.output.count("\n") == 1
