import math

import pytest
import torch

from rnnlm.config import load_config
from rnnlm.data.batching import PAD
from rnnlm.models.lm import RNNLM, detach_state


def make_model(vocab_size=11, *overrides):
    config = load_config(None, ["model.embed_size=6", "model.hidden_size=6", *overrides])
    torch.manual_seed(0)
    return RNNLM(vocab_size, config.model)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_zeroed_decoder_gives_log_vocab_size(cell):
    model = make_model(13, f"model.cell={cell}")
    torch.nn.init.zeros_(model.decoder.weight)
    torch.nn.init.zeros_(model.decoder.bias)
    inputs = torch.randint(0, 13, (7, 3))
    targets = torch.randint(0, 13, (7, 3))
    out = model(inputs, targets, model.init_state(3))
    assert out.tokens.item() == 21
    assert (out.nll / out.tokens).item() == pytest.approx(math.log(13), abs=1e-6)


@pytest.mark.parametrize("cell,n_state", [("rnn", 1), ("gru", 1), ("lstm", 2)])
def test_state_shapes(cell, n_state):
    model = make_model(11, f"model.cell={cell}", "model.num_layers=3")
    state = model.init_state(5)
    assert len(state) == 3 * n_state and all(s.shape == (5, 6) for s in state)
    out = model(torch.zeros(4, 5, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long), state)
    assert len(out.state) == 3 * n_state and all(s.shape == (5, 6) for s in out.state)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_a_smaller_top_layer_ties_to_the_embedding(impl):
    """AWD-LSTM's shape: wide middle layers, a top layer the size of the embedding, tied decoder."""
    model = make_model(11, "model.cell=lstm", "model.num_layers=3", "model.hidden_size=9", "model.output_size=6",
                       "model.tie_weights=true", f"model.impl={impl}")
    assert [s.shape[-1] for s in model.init_state(2)] == [9, 9, 9, 9, 6, 6]
    assert model.rnn.weight_hh_l2.shape == (24, 6) and model.rnn.weight_ih_l2.shape == (24, 9)
    out = model(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2, dtype=torch.long), model.init_state(2))
    assert out.state[-1].shape == (2, 6) and torch.isfinite(out.nll)


def test_pad_targets_are_not_scored():
    model = make_model()
    inputs = torch.randint(0, 11, (5, 2))
    targets = torch.randint(0, 11, (5, 2))
    full = model(inputs, targets, model.init_state(2))
    padded_targets = targets.clone()
    padded_targets[3:, 1] = PAD
    padded = model(inputs, padded_targets, model.init_state(2))
    assert padded.tokens.item() == 8
    per_token = torch.nn.functional.cross_entropy(
        model.decoder(model.encode(inputs, model.init_state(2))[0]).view(-1, 11), targets.view(-1), reduction="none"
    ).view(5, 2)
    assert padded.nll.item() == pytest.approx(full.nll.item() - per_token[3:, 1].sum().item(), rel=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_step_by_step_equals_whole_sequence(cell):
    model = make_model(11, f"model.cell={cell}", "model.num_layers=2").eval()
    tokens = torch.randint(0, 11, (9, 2))
    whole, _ = model.prefill(tokens, model.init_state(2))
    state = model.init_state(2)
    for t in range(9):
        last, state = model.step(tokens[t], state)
    torch.testing.assert_close(last, whole)
    assert torch.allclose(last.exp().sum(-1), torch.ones(2))


def test_tied_weights_share_one_matrix():
    model = make_model(11, "model.tie_weights=true")
    assert model.decoder.weight is model.embedding.weight
    untied = make_model(11)
    assert untied.num_parameters() - model.num_parameters() == 11 * 6


def test_forget_gate_bias_starts_at_one():
    model = make_model(11, "model.num_layers=2")
    for layer in range(2):
        bias = getattr(model.rnn, f"bias_ih_l{layer}") + getattr(model.rnn, f"bias_hh_l{layer}")
        assert torch.all(bias[6:12] == 1.0)
        assert not torch.all(bias[:6] == 1.0)


def test_uniform_init_bounds_every_weight():
    model = make_model(11, "model.init=uniform", "model.init_range=0.05", "model.forget_bias=0")
    for name, p in model.named_parameters():
        if name != "decoder.bias":
            assert p.abs().max().item() <= 0.05, name
            assert p.abs().max().item() > 0.02, name


def test_detach_state_keeps_values_and_cuts_graph():
    model = make_model()
    out = model(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), model.init_state(2))
    detached = detach_state(out.state)
    assert all(not s.requires_grad for s in detached)
    assert all(torch.equal(a, b) for a, b in zip(detached, out.state))


def test_tiny_model_overfits_a_short_text():
    text = "the quick brown fox jumps over the lazy dog\n"
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text * 4])
    config = load_config(None, ["model.embed_size=16", "model.hidden_size=64", "model.num_layers=1"])
    torch.manual_seed(0)
    model = RNNLM(len(chars), config.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    inputs, targets = ids[:-1].unsqueeze(1), ids[1:].unsqueeze(1)
    for _ in range(150):
        out = model(inputs, targets, model.init_state(1))
        loss = out.nll / out.tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
