"""The deep bidirectional LM: no head sees its own target; its three numbers are reported apart."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from helpers import tiny_config, train_run
from rnnlm.checkpoint import load_model
from rnnlm.cli import cli
from rnnlm.config import load_config
from rnnlm.data.corpus import encode_text_file
from rnnlm.data.registry import default_cache_dir
from rnnlm.evaluate import evaluate
from rnnlm.models import build_model
from rnnlm.sample import generate, generate_reverse

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"), ("lstm", "tanh")]
# head -> the sequence position that logits[k] predicts
TARGET = {"forward": lambda k: k + 1, "backward": lambda k: k, "infill": lambda k: k + 1}


@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("cell,nonlinearity", CELLS)
def test_no_head_sees_the_token_it_predicts(cell, nonlinearity, impl, layers):
    torch.manual_seed(0)
    config = load_config(None, [f"model.cell={cell}", f"model.nonlinearity={nonlinearity}", f"model.impl={impl}",
                                f"model.num_layers={layers}", "model.bidirectional=true", "model.embed_size=4",
                                "model.hidden_size=5", "model.init=uniform", "model.init_range=0.5"]).model
    model = build_model(9, config).double().eval()
    L, B = 6, 2
    embedded = model.embedding(torch.randint(0, 9, (L + 1, B))).double().detach().requires_grad_()
    logits, _ = model.head_logits(embedded, torch.full((B,), L + 1), tuple(s.double() for s in model.init_state(B)))
    for head, predicts in TARGET.items():
        reached = 0
        for k in range(logits[head].shape[0]):
            (grad,) = torch.autograd.grad(logits[head][k, 0].sum(), embedded, retain_graph=True)
            assert torch.count_nonzero(grad[predicts(k)]) == 0, (head, k)  # exactly zero: no leak
            assert torch.count_nonzero(grad[:, 1]) == 0  # columns never mix
            reached += torch.count_nonzero(grad).item()
        assert reached > 0, head  # the head does read its context


def test_the_objective_is_the_mean_of_both_directions_plus_infill():
    torch.manual_seed(0)
    model = build_model(9, load_config(None, ["model.bidirectional=true", "model.hidden_size=6"]).model)
    inputs, targets = torch.randint(0, 9, (5, 3)), torch.randint(0, 9, (5, 3))
    out = model(inputs, targets, model.init_state(3))
    backward, infill = out.backward, out.infill
    assert out.tokens.item() == 15 and backward.tokens.item() == 15 and infill.tokens.item() == 12
    expected = (out.nll / 15 + backward.nll / 15) / 2 + infill.nll / 12
    torch.testing.assert_close(out.objective, expected)


def train_tiny(corpus, run_dir, *overrides):
    config = tiny_config(corpus, "model.bidirectional=true", "train.max_steps=30", "optim.name=adam",
                         "optim.lr=0.01", *overrides)
    return train_run(config, run_dir)[0]


def test_eval_reports_forward_backward_and_infill(tiny_corpus, tmp_path):
    train_tiny(tiny_corpus, tmp_path / "run")
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "run" / "best.pt"), "--split", "valid", "--json"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    keys = {"loss", "ppl", "bits_per_token", "bits_per_char", "bits_per_byte", "tokens", "chars", "bytes"}
    assert keys <= set(numbers) and keys == set(numbers["backward"]) == set(numbers["infill"])
    assert numbers["backward"]["tokens"] == numbers["tokens"]
    assert 0 < numbers["infill"]["tokens"] < numbers["tokens"]
    text = CliRunner().invoke(cli, ["eval", str(tmp_path / "run" / "best.pt"), "--split", "valid"]).output
    assert "forward (the language-model number" in text and "infill pseudo-perplexity" in text


def test_reverse_sampling_ends_with_the_suffix_and_is_reproducible(tiny_corpus, tmp_path):
    trainer = train_tiny(tiny_corpus, tmp_path / "run")
    model, tokenizer = trainer.model, trainer.tokenizer
    a = generate_reverse(model, tokenizer, suffix="speak.", length=25, seed=4)
    assert a == generate_reverse(model, tokenizer, suffix="speak.", length=25, seed=4)
    assert a[0].endswith("speak.") and len(a[0]) == 25 + len("speak.")
    result = CliRunner().invoke(cli, ["sample", str(tmp_path / "run" / "best.pt"), "--reverse", "--prompt",
                                      "All:", "--length", "12", "--seed", "1"])
    assert result.exit_code == 0 and result.output.rstrip("\n").endswith("All:")


def test_fill_ranks_each_blank(tiny_corpus, tmp_path):
    train_tiny(tiny_corpus, tmp_path / "run", "train.max_steps=120")
    result = CliRunner().invoke(cli, ["fill", str(tmp_path / "run" / "best.pt"), "Sp___ak, s___eak.", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "blank 1:" and lines[4] == "blank 2:" and len(lines) == 8
    probabilities = [float(line.split("%")[0]) for line in lines if "%" in line]
    assert probabilities[:3] == sorted(probabilities[:3], reverse=True) and 0 < sum(probabilities[:3]) <= 100


def test_fill_and_reverse_need_a_bidirectional_model(tiny_corpus, tmp_path):
    train_run(tiny_config(tiny_corpus), tmp_path / "run")
    for args in (["fill", str(tmp_path / "run" / "best.pt"), "a ___ b"],
                 ["sample", str(tmp_path / "run" / "best.pt"), "--reverse"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "needs a bidirectional model" in result.output


COMBINATIONS = [(cell, nl, impl, bi) for cell, nl in [*CELLS, ("rnn", "sigmoid")]
                for impl in ("fused", "reference") for bi in (False, True) if not (nl == "sigmoid" and impl == "fused")]


@pytest.mark.parametrize("cell,nonlinearity,impl,bidirectional", COMBINATIONS)
def test_every_model_trains_samples_and_evaluates_from_its_checkpoint(tiny_corpus, tmp_path, cell, nonlinearity,
                                                                      impl, bidirectional):
    config = tiny_config(tiny_corpus, f"model.cell={cell}", f"model.nonlinearity={nonlinearity}",
                         f"model.impl={impl}", f"model.bidirectional={str(bidirectional).lower()}",
                         "train.max_steps=4")
    train_run(config, tmp_path / "run")
    loaded = load_model(tmp_path / "run" / "best.pt")
    text = generate(loaded.model, loaded.tokenizer, prompt="All", length=10, seed=1)[0]
    assert text.startswith("All") and len(text) == 13
    split = encode_text_file(tiny_corpus, loaded.tokenizer, default_cache_dir())
    result = evaluate(loaded.model, split, boundary_id=loaded.tokenizer.boundary_id, batch_size=2, bptt=16)
    assert result.tokens == len(tiny_corpus.read_text()) and math.isfinite(result.loss)
    assert bool(result.heads) == bidirectional


@pytest.mark.parametrize("trained_impl,other", [("fused", "reference"), ("reference", "fused")])
def test_eval_with_the_other_implementation_gives_the_same_loss(tiny_corpus, tmp_path, trained_impl, other):
    config = tiny_config(tiny_corpus, f"model.impl={trained_impl}", "model.num_layers=2", "train.max_steps=10")
    train_run(config, tmp_path / "run")
    losses = []
    for impl in (trained_impl, other):
        result = CliRunner().invoke(cli, ["eval", str(tmp_path / "run" / "best.pt"), "--split", "valid", "--json",
                                          "--impl", impl, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        losses.append(json.loads(result.output)["loss"])
    assert abs(losses[0] - losses[1]) / losses[0] < 1e-5
