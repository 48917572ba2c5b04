import json
import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import TINY_MODEL, invoke, tiny_config, train_run
from rnnlm.checkpoint import load_model
from rnnlm.config import load_config
from rnnlm.data.batching import PAD
from rnnlm.errors import ConfigError
from rnnlm.models import build_model
from rnnlm.models.softmax import AdaptiveSoftmax, resolve_cutoffs

ADAPTIVE = ["tokenizer.kind=word", "model.softmax=adaptive", "model.cutoffs=[4, 12]"]


def adaptive_model(vocab=30, cutoffs="[5, 12]"):
    torch.manual_seed(0)
    config = load_config(None, [*TINY_MODEL, "tokenizer.kind=word", "model.softmax=adaptive",
                                f"model.cutoffs={cutoffs}", "model.init_range=0.5"])
    return build_model(vocab, config.model).double().eval()


def train_cli(corpus, run_dir, *extra):
    return invoke("train", "--run-dir", run_dir, f"data.corpus={corpus}", *TINY_MODEL, "train.batch_size=4",
                  "train.bptt=8", "train.epochs=0", "train.max_steps=30", "train.tensorboard=false",
                  "data.valid_fraction=0.1", "data.test_fraction=0.1", "optim.name=adam", "optim.lr=0.01", *extra)


def test_log_probs_are_a_distribution_and_forward_scores_them():
    model = adaptive_model()
    inputs = torch.randint(0, 30, (6, 5), generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 4, 5, 11, 12, 29]).repeat(5, 1).T.clone()  # (6, 5): head, both clusters, edges
    targets[4:, 3] = PAD
    state = model.init_state(5)
    hidden, _ = model.encode(inputs, state)  # (T, B, H)
    log_probs = model.log_probs(hidden.reshape(-1, hidden.size(-1)))  # (T * B, V)
    assert log_probs.dtype == torch.float64 and log_probs.shape == (30, 30)
    assert torch.allclose(log_probs.logsumexp(dim=-1), torch.zeros(30, dtype=torch.float64), atol=1e-12)
    scored = targets.reshape(-1) != PAD
    expected = -log_probs[scored].gather(1, targets.reshape(-1)[scored].unsqueeze(1)).sum()
    out = model(inputs, targets, state)
    assert out.tokens == 28
    assert out.nll.item() == pytest.approx(expected.item(), rel=1e-12)
    step_log_probs, _ = model.step(inputs[0], state)  # generation sees the same distribution
    assert torch.allclose(step_log_probs, log_probs[:5], atol=1e-12)


def test_a_cluster_without_targets_gets_zero_gradients_not_none():
    model = adaptive_model()
    inputs = torch.randint(0, 30, (3, 2))
    targets = torch.tensor([[1, PAD], [2, PAD], [3, PAD]])  # head words only
    model(inputs, targets, model.init_state(2)).nll.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.decoder.tail.parameters())  # as DDP needs
    assert model.decoder.head.weight.grad.any()


def test_projections_start_orthonormal_and_output_layers_uniform():
    torch.manual_seed(0)
    decoder = AdaptiveSoftmax(64, 400, [100, 200], div_value=2.0, cluster_grad=1.0)  # projections 64 -> 32, 64 -> 16
    decoder.init_weights(0.1)
    for cluster, width in zip(decoder.tail, (32, 16)):
        projection = cluster[0].weight
        assert projection.shape == (width, 64)
        assert torch.allclose(projection @ projection.T, torch.eye(width), atol=1e-5)  # keeps h's scale
        assert cluster[1].weight.abs().max() <= 0.1 and not cluster[1].bias.any()
    assert decoder.head.weight.abs().max() <= 0.1 and not decoder.head.bias.any()


def test_cluster_rows_learn_at_cluster_grad_and_nothing_else_changes():
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, dtype=torch.float64)
    targets = torch.randint(0, 60, (40,), generator=torch.Generator().manual_seed(2))
    targets[:3] = torch.tensor([25, 45, 59])  # both clusters have targets
    grads, values = [], []
    for scale in (1.0, 0.1):
        torch.manual_seed(1)
        decoder = AdaptiveSoftmax(16, 60, [20, 40], div_value=2.0, cluster_grad=scale).double()
        decoder.init_weights(0.3)
        h = hidden.clone().requires_grad_()
        nll = decoder.nll(h, targets)
        nll.backward()
        values.append((nll.detach(), decoder.log_prob(hidden).detach()))
        grads.append({"hidden": h.grad, **{name: p.grad for name, p in decoder.named_parameters()}})
    assert torch.equal(values[0][0], values[1][0]) and torch.equal(values[0][1], values[1][1])  # same forward
    plain, scaled = grads
    for name in ("head.weight", "head.bias"):
        assert torch.equal(scaled[name][:20], plain[name][:20])  # the head's words: untouched
        assert torch.allclose(scaled[name][20:], 0.1 * plain[name][20:], rtol=1e-15, atol=0)  # its 2 clusters
        assert plain[name][20:].abs().min() > 0
    for name in plain:
        if not name.startswith("head."):
            assert torch.equal(scaled[name], plain[name]), name  # hidden state and tail clusters: untouched


def test_the_configured_cluster_grad_reaches_the_model():
    assert adaptive_model().decoder.cluster_grad == 0.1  # the default
    config = load_config(None, [*TINY_MODEL, "tokenizer.kind=word", "model.softmax=adaptive",
                                "model.adaptive_cluster_grad=0.5"])
    assert build_model(30, config.model).decoder.cluster_grad == 0.5


def test_a_run_saved_before_cluster_grad_resumes_and_loads_unscaled(tiny_corpus, tmp_path):
    result = train_cli(tiny_corpus, tmp_path / "run", *ADAPTIVE, "train.max_steps=4")
    assert result.exit_code == 0, result.output
    last = tmp_path / "run" / "last.pt"
    payload = torch.load(last, weights_only=True)
    del payload["config"]["model"]["adaptive_cluster_grad"]  # as written before the key existed
    torch.save(payload, last)
    assert load_model(last).model.decoder.cluster_grad == 1.0  # what that run trained with, not the new 0.1
    resumed = invoke("train", "--resume", tmp_path / "run", "train.max_steps=6")
    assert resumed.exit_code == 0, resumed.output
    assert "Done: 6 steps" in resumed.output
    assert load_model(last).config.model.adaptive_cluster_grad == 1.0


def test_cutoffs_default_to_the_vocabulary_and_must_fit_it():
    assert resolve_cutoffs((), 33278) == [2000, 10000]
    assert resolve_cutoffs((), 10000) == [2000]
    assert resolve_cutoffs((), 300) == []  # one head over every word: the full softmax
    assert resolve_cutoffs((5, 12), 30) == [5, 12]
    with pytest.raises(ConfigError, match=r"model.cutoffs must be below the vocabulary size, 12 words here"):
        resolve_cutoffs((5, 12), 12)
    small = AdaptiveSoftmax(16, 40, [10, 20, 30], 4.0, 1.0)  # 16 / 4^3 rounds to 0: at least one dimension
    assert [cluster[0].out_features for cluster in small.tail] == [4, 1, 1]


def test_training_with_adaptive_softmax_lowers_the_loss(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, *ADAPTIVE, "train.max_steps=60", "optim.name=adam", "optim.lr=0.01")
    trainer, _ = train_run(config, tmp_path / "run")
    assert isinstance(trainer.model.decoder, AdaptiveSoftmax) and trainer.model.decoder.bounds[:2] == [4, 12]
    losses = [entry["loss"] for entry in trainer.history if "loss" in entry]
    assert len(losses) == 60 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert load_config(tmp_path / "run" / "config.yaml") == config  # cutoffs survive the YAML round trip


def test_eval_is_exact_and_sample_works_from_an_adaptive_checkpoint(tiny_corpus, tmp_path):
    result = train_cli(tiny_corpus, tmp_path / "run", *ADAPTIVE)
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "run" / "best.pt"
    text = tmp_path / "scored.txt"
    text.write_text("All:\nSpeak, speak.\nYou are all resolved rather to famish?\n")
    scored = invoke("eval", checkpoint, "--text", text, "--json", "--bptt", 5, "--start", "zero")  # as by hand below
    assert scored.exit_code == 0, scored.output
    numbers = json.loads(scored.output)

    loaded = load_model(checkpoint)  # by hand: one token at a time through the generation step
    model, tokenizer = loaded.model.double(), loaded.tokenizer
    assert isinstance(model.decoder, AdaptiveSoftmax)
    ids = tokenizer.encode(text.read_text()).tolist()
    state, previous, nll = model.init_state(1), tokenizer.boundary_id, 0.0
    with torch.no_grad():
        for target in ids:
            log_probs, state = model.step(torch.tensor([previous]), state)
            nll -= log_probs[0, target].item()
            previous = target
    assert numbers["tokens"] == len(ids) == 13
    assert numbers["ppl"] == pytest.approx(math.exp(nll / len(ids)), rel=1e-5)

    sampled = invoke("sample", checkpoint, "--prompt", "All:", "--length", 12, "--seed", 2)
    again = invoke("sample", checkpoint, "--prompt", "All:", "--length", 12, "--seed", 2)
    assert sampled.exit_code == 0 and sampled.output == again.output and sampled.output.startswith("All:")
    assert len(sampled.output.split()) >= 6


@pytest.mark.parametrize("overrides,message", [
    (["model.tie_weights=true", "model.embed_size=16"],
     "model.softmax adaptive cannot be combined with model.tie_weights"),
    (["model.bidirectional=true"], "model.softmax adaptive is not available with model.bidirectional"),
    (["tokenizer.kind=char"], "model.softmax adaptive needs tokenizer.kind word, whose ids are sorted by frequency "
                              "(got char)"),
    (["model.cutoffs=[12, 4]"], "model.cutoffs must be positive and increasing (got [12, 4])"),
    (["model.cutoffs=[0, 4]"], "model.cutoffs must be positive and increasing (got [0, 4])"),
    (["model.cutoffs=4"], "model.cutoffs must be a list (got 4)"),
    (["tokenizer.vocab_size=10"], "model.cutoffs must be below tokenizer.vocab_size 10 (got [4, 12])"),
    (["model.cutoffs=[4, 500]"], "model.cutoffs must be below the vocabulary size, 25 words here (got [4, 500])"),
    (["model.adaptive_div=0.5"], "model.adaptive_div must be at least 1 (got 0.5)"),
    (["model.adaptive_cluster_grad=0"], "model.adaptive_cluster_grad must be above 0 and at most 1 (got 0.0)"),
    (["model.adaptive_cluster_grad=2"], "model.adaptive_cluster_grad must be above 0 and at most 1 (got 2.0)"),
], ids=["tie-weights", "bidirectional", "char-tokenizer", "decreasing", "zero", "not-a-list", "over-vocab-cap",
        "over-vocabulary", "div", "cluster-grad-zero", "cluster-grad-above-one"])
def test_each_refusal_is_one_clear_error_with_exit_2(tiny_corpus, tmp_path, overrides, message):
    result = train_cli(tiny_corpus, tmp_path / "run", *ADAPTIVE, *overrides)
    assert result.exit_code == 2, result.output
    assert result.output.count("Error:") == 1 and message in result.output


@pytest.mark.slow
def test_two_ranks_train_when_a_cluster_has_no_target(tiny_corpus, tmp_path):
    """The last cluster holds only <unk> (id 24, last), which the tiny corpus never has: no step scores it."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "rnnlm"]
    args = ["train", "--run-dir", tmp_path / "run", f"data.corpus={tiny_corpus}", *TINY_MODEL, "train.batch_size=2",
            "train.bptt=8", "train.epochs=0", "train.max_steps=8", "train.tensorboard=false", "train.dist_timeout=30",
            "data.valid_fraction=0.1", "data.test_fraction=0.1", "tokenizer.kind=word", "model.softmax=adaptive",
            "model.cutoffs=[4, 24]"]
    result = subprocess.run([*launcher, *map(str, args)], capture_output=True, text=True, timeout=90,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Done: 8 steps") == 1
