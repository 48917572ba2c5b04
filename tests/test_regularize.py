"""Regularisers and NT-ASGD: each does what its paper says, and is off unless asked for."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_config, train_run
from rnnlm.checkpoint import load_model
from rnnlm.config import Config, load_config
from rnnlm.models import build_model
from rnnlm.models.regularize import activation_penalty, dropout, embedding_dropout
from rnnlm.optim import Averager, Schedule, build_optimizer
from rnnlm.train import Trainer


def test_every_regulariser_is_off_by_default():
    m = Config().model
    assert m.dropouts() == (0.0, 0.0, 0.0)
    assert (m.dropout_embedding, m.weight_drop, m.activation_reg, m.temporal_reg) == (0, 0, 0, 0)
    assert not m.locked_dropout and not m.tie_weights and not Config().train.variable_bptt


def test_specific_dropouts_override_the_general_one():
    m = load_config(None, ["model.dropout=0.4", "model.dropout_between=0.25", "model.dropout_input=0"]).model
    assert m.dropouts() == (0.0, 0.25, 0.4)


def test_locked_dropout_shares_one_mask_over_time():
    torch.manual_seed(0)
    out = dropout(torch.ones(50, 3, 8), 0.5, training=True, locked=True)
    assert torch.equal(out, out[:1].expand_as(out))  # every time step: the same mask
    assert set(out.unique().tolist()) == {0.0, 2.0}
    unlocked = dropout(torch.ones(50, 3, 8), 0.5, training=True)
    assert not torch.equal(unlocked, unlocked[:1].expand_as(unlocked))
    assert torch.equal(dropout(torch.ones(4, 2, 2), 0.5, training=False, locked=True), torch.ones(4, 2, 2))


def test_embedding_dropout_drops_whole_word_types():
    torch.manual_seed(0)
    weight = torch.randn(200, 6)
    dropped = embedding_dropout(weight, 0.3, training=True)
    zero_rows = (dropped == 0).all(dim=1)
    assert 30 < zero_rows.sum() < 90  # about 60 of 200
    torch.testing.assert_close(dropped[~zero_rows], weight[~zero_rows] / 0.7)


def test_activation_penalties_on_a_hand_checked_example():
    raw = torch.tensor([[[1.0, 2.0]], [[3.0, 2.0]]])  # (T=2, B=1, H=2)
    dropped = torch.tensor([[[2.0, 0.0]], [[0.0, 4.0]]])
    # AR: mean(dropped^2) = (4 + 16) / 4 = 5; TAR: mean((raw_1 - raw_0)^2) = (4 + 0) / 2 = 2
    assert activation_penalty(raw, dropped, ar=2.0, tar=0.0).item() == pytest.approx(10.0)
    assert activation_penalty(raw, dropped, ar=0.0, tar=3.0).item() == pytest.approx(6.0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_weight_drop_is_drop_connect_on_the_recurrent_matrices_only(cell, impl):
    """In training, the model computes exactly what an eval-mode copy computes with those weights dropped."""
    config = load_config(None, [f"model.cell={cell}", f"model.impl={impl}", "model.num_layers=2",
                                "model.weight_drop=0.5", "model.hidden_size=6", "model.embed_size=6"]).model
    torch.manual_seed(0)
    model = build_model(9, config).double()
    inputs, targets = torch.randint(0, 9, (5, 2)), torch.randint(0, 9, (5, 2))
    state = tuple(s.double() for s in model.init_state(2))
    torch.manual_seed(7)
    trained = model(inputs, targets, state).nll
    copy = build_model(9, config).double()
    copy.load_state_dict(model.state_dict())
    torch.manual_seed(7)  # the same draws, in the order the stack makes them: layer by layer
    with torch.no_grad():
        for k in range(2):
            w = getattr(copy.rnn, f"weight_hh_l{k}")
            w.copy_(F.dropout(w, 0.5, True))
    torch.testing.assert_close(copy.eval()(inputs, targets, state).nll, trained, rtol=0, atol=1e-10)


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    config = load_config(None, ["optim.lr=1.0", "optim.schedule=cosine", "optim.warmup_steps=4",
                                "optim.min_lr=0.1"]).optim
    schedule = Schedule(build_optimizer([torch.nn.Parameter(torch.zeros(1))], config), config, total_steps=14)
    rates = []
    for step in range(14):
        schedule.step_start(step)
        rates.append(schedule.optimizer.param_groups[0]["lr"])
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4 + 5] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rates[-1] > 0.1 and rates == sorted(rates[:4]) + sorted(rates[4:], reverse=True)


def test_ntasgd_triggers_when_validation_stops_improving_and_averages():
    model = torch.nn.Linear(1, 1, bias=False)
    averager = Averager(model, load_config(None, ["optim.name=ntasgd", "optim.nonmono=2"]).optim)
    for loss in (5.0, 4.0, 3.0, 3.5, 3.2):  # 3.5 and 3.2 are worse than 3.0, but 3.0 is recent
        assert not averager.validated(loss)
    assert averager.validated(3.1)  # worse than the best of the checks before the last 2
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            model.weight.fill_(value)
        averager.update()
    assert averager.count == 4  # the weights at the trigger and after each of the 3 steps


def test_ntasgd_average_is_the_mean_of_the_weights_since_the_trigger():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(10.0)
    averager = Averager(model, load_config(None, ["optim.name=ntasgd", "optim.nonmono=1"]).optim)
    for loss in (1.0, 2.0):
        averager.validated(loss)
    averager.validated(3.0)  # triggers: the average starts at the current weights (10)
    for value in (20.0, 30.0):
        with torch.no_grad():
            model.weight.fill_(value)
        averager.update()
    with averager.applied():
        assert model.weight.item() == pytest.approx(20.0)
    assert model.weight.item() == 30.0


AWD_LIKE = ["model.num_layers=2", "model.dropout=0.3", "model.dropout_between=0.2", "model.dropout_embedding=0.1",
            "model.locked_dropout=true", "model.weight_drop=0.3", "model.activation_reg=2",
            "model.temporal_reg=1", "train.variable_bptt=true", "optim.name=ntasgd", "optim.nonmono=1",
            "optim.schedule=constant", "train.eval_every=5", "optim.lr=5"]


def run(config, run_dir, resume=False):
    return train_run(config, run_dir, resume=resume)[0]


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_awd_style_run_resumes_bitwise(tiny_corpus, tmp_path, impl):
    common = [*AWD_LIKE, f"model.impl={impl}"]
    full = run(tiny_config(tiny_corpus, *common, "train.max_steps=40"), tmp_path / "full")
    assert full.averager.active  # NT-ASGD triggered along the way
    run(tiny_config(tiny_corpus, *common, "train.max_steps=20"), tmp_path / "cut")
    resumed = run(tiny_config(tiny_corpus, *common, "train.max_steps=40"), tmp_path / "cut", resume=True)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert [e["loss"] for e in full.history if "loss" in e] == [e["loss"] for e in resumed.history if "loss" in e]
    assert all(torch.equal(a, b) for a, b in zip(full.averager.average, resumed.averager.average))


def test_an_averaged_checkpoint_evaluates_the_average(tiny_corpus, tmp_path):
    trainer = run(tiny_config(tiny_corpus, *AWD_LIKE, "train.max_steps=40"), tmp_path / "run")
    loaded = load_model(tmp_path / "run" / "last.pt")
    with trainer.averager.applied():
        expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for name, value in loaded.model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_variable_bptt_windows_vary_and_scale_the_step(tiny_corpus, tmp_path, monkeypatch):
    config = tiny_config(tiny_corpus, "train.variable_bptt=true", "train.bptt=12", "train.max_steps=30",
                         "optim.schedule=constant")
    trainer = Trainer(config, tmp_path / "run", progress=False, log=lambda m: None)
    trainer.setup()
    seen = []
    original = trainer.optimizer.step
    def record(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)
    monkeypatch.setattr(trainer.optimizer, "step", record)
    lengths = [inputs.size(0) for inputs, _ in list(trainer.batches)[:30]]
    trainer.batches.restart()
    trainer.batches.load_state_dict({"position": 0, "random": trainer.batches.state_dict()["random"]})
    assert len(set(lengths)) > 3 and all(5 <= n <= 52 for n in lengths)
    trainer.fit()
    assert len(set(seen)) > 3 and trainer.optimizer.param_groups[0]["lr"] == config.optim.lr


def test_skip_nonfinite_skips_a_bad_step_and_limits_the_streak(tiny_corpus, tmp_path, monkeypatch):
    from rnnlm.errors import TrainingError
    from rnnlm.models.lm import RNNLM
    original = RNNLM.forward
    bad_steps = {3, 7, 8}
    calls = {"n": 0}
    def sometimes_nan(self, inputs, targets, state):
        out = original(self, inputs, targets, state)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad_steps:
                out.nll = out.nll * float("nan")
        return out
    monkeypatch.setattr(RNNLM, "forward", sometimes_nan)
    trainer = run(tiny_config(tiny_corpus, "train.skip_nonfinite=2", "train.max_steps=12"), tmp_path / "a")
    assert trainer.step == 12 and len([e for e in trainer.history if "loss" in e]) == 9
    calls["n"] = 0
    bad_steps.update({9})
    with pytest.raises(TrainingError, match="after 2 skipped steps in a row"):
        run(tiny_config(tiny_corpus, "train.skip_nonfinite=2", "train.max_steps=12"), tmp_path / "b")


def test_adamw_and_momentum_build():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adamw = build_optimizer(params, load_config(None, ["optim.name=adamw", "optim.weight_decay=0.1"]).optim)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.1
    sgd = build_optimizer(params, load_config(None, ["optim.momentum=0.9"]).optim)
    assert sgd.param_groups[0]["momentum"] == 0.9
