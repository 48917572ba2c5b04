import os
import signal

import pytest
import torch

from helpers import tiny_config, train_run
from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import load_config
from rnnlm.errors import DataError, Interrupted, TrainingError, UsageError
from rnnlm.models.lm import RNNLM
from rnnlm.optim import Schedule, build_optimizer
from rnnlm.runs import plan_run
from rnnlm.train import Trainer


def run(config, run_dir, resume=False, overwrite=False):
    return train_run(config, run_dir, resume=resume, overwrite=overwrite)


def train_losses(history):
    return [entry["loss"] for entry in history if "loss" in entry]


def test_training_lowers_the_loss_and_writes_the_run(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, "train.max_steps=60", "optim.name=adam", "optim.lr=0.01")
    trainer, summary = run(config, tmp_path / "run")
    losses = train_losses(trainer.history)
    assert summary.steps == 60 and len(losses) == 60
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"best.pt", "last.pt", "config.yaml"}
    assert load_config(tmp_path / "run" / "config.yaml") == config
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["trainer"]["step"] == 60 and saved["metrics"]["tokens"] > 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resume_equals_uninterrupted_across_an_epoch_end(tiny_corpus, tmp_path, cell):
    common = ["model.num_layers=2", "model.dropout=0.3", f"model.cell={cell}", "optim.lr=2.0"]
    full, _ = run(tiny_config(tiny_corpus, *common, "train.max_steps=80"), tmp_path / "full")
    first, _ = run(tiny_config(tiny_corpus, *common, "train.max_steps=40"), tmp_path / "split")
    assert first.epoch == 1 and len(first.batches) < 80  # the resumed half crosses the epoch end
    resumed, _ = run(tiny_config(tiny_corpus, *common, "train.max_steps=80"), tmp_path / "split", resume=True)
    assert resumed.epoch == 2
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert train_losses(resumed.history) == train_losses(full.history)
    assert resumed.schedule.lr == full.schedule.lr


def test_ctrl_c_saves_and_resumes_exactly(tiny_corpus, tmp_path, monkeypatch):
    common = ["model.dropout=0.2", "train.max_steps=30"]
    before = signal.getsignal(signal.SIGINT)  # Python's default_int_handler, or SIG_IGN under `nohup ... &`
    full, _ = run(tiny_config(tiny_corpus, *common), tmp_path / "full")

    original = Trainer._train_step
    def interrupt_at_step_12(self, inputs, targets):
        if self.step == 11:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step; the step still completes
        return original(self, inputs, targets)
    monkeypatch.setattr(Trainer, "_train_step", interrupt_at_step_12)
    with pytest.raises(Interrupted) as info:
        run(tiny_config(tiny_corpus, *common), tmp_path / "cut")
    assert info.value.exit_code == 130
    assert f"rnnlm train --resume {tmp_path / 'cut'}" in str(info.value)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["trainer"]["step"] == 12
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored

    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed, _ = run(tiny_config(tiny_corpus, *common), tmp_path / "cut", resume=True)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_non_finite_loss_stops_and_leaves_the_last_checkpoint_alone(tiny_corpus, tmp_path, monkeypatch):
    run(tiny_config(tiny_corpus), tmp_path / "run")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    original = RNNLM.forward
    def poisoned(self, inputs, targets, state):
        out = original(self, inputs, targets, state)
        out.nll = out.nll * float("nan")
        return out
    monkeypatch.setattr(RNNLM, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 7 \(epoch 1\)"):
        run(tiny_config(tiny_corpus, "train.max_steps=12"), tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_deferred_read_back_trains_the_same_and_still_stops_before_saving_a_nan(tiny_corpus, tmp_path,
                                                                                 monkeypatch):
    """On a GPU, loss and gradient norm are read back only at log points; the weights must not differ,
    and a NaN between log points must still stop the run before any checkpoint is written."""
    common = ["train.max_steps=20", "train.log_every=5"]
    eager, _ = run(tiny_config(tiny_corpus, *common), tmp_path / "eager")
    monkeypatch.setattr(Trainer, "_check_each_step", property(lambda self: False))
    deferred, _ = run(tiny_config(tiny_corpus, *common), tmp_path / "deferred")
    for a, b in zip(eager.model.parameters(), deferred.model.parameters()):
        assert torch.equal(a, b)
    assert train_losses(deferred.history) == pytest.approx(train_losses(eager.history))

    before = (tmp_path / "deferred" / "last.pt").read_bytes()
    original = RNNLM.forward
    def poisoned_at_step_22(self, inputs, targets, state):
        out = original(self, inputs, targets, state)
        if self.training and deferred_run.step == 21:
            out.nll = out.nll * float("nan")
        return out
    monkeypatch.setattr(RNNLM, "forward", poisoned_at_step_22)
    saved = load_checkpoint(tmp_path / "deferred" / "last.pt")
    deferred_run = Trainer(tiny_config(tiny_corpus, "train.max_steps=40", "train.log_every=5",
                                       "train.eval_every=4"),
                           tmp_path / "deferred", resume_from=saved, progress=False, log=lambda m: None)
    try:
        deferred_run.setup()
        with pytest.raises(TrainingError, match=r"non-finite loss at step 22 "):
            deferred_run.fit()
    finally:
        deferred_run.close()
    assert deferred_run.step == 24  # noticed at the next validation, two steps later
    assert load_checkpoint(tmp_path / "deferred" / "last.pt")["trainer"]["step"] == 20
    assert (tmp_path / "deferred" / "last.pt").read_bytes() == before


def test_a_folder_holding_a_run_is_refused_unless_overwritten(tiny_corpus, tmp_path):
    run(tiny_config(tiny_corpus), tmp_path / "run")
    best = (tmp_path / "run" / "best.pt").read_bytes()
    with pytest.raises(UsageError, match="already holds a run .*--resume .*--overwrite"):
        run(tiny_config(tiny_corpus), tmp_path / "run")
    assert (tmp_path / "run" / "best.pt").read_bytes() == best
    run(tiny_config(tiny_corpus, "train.seed=5"), tmp_path / "run", overwrite=True)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["seed"] == 5


def test_resume_refuses_an_architecture_change(tiny_corpus, tmp_path):
    run(tiny_config(tiny_corpus), tmp_path / "run")
    with pytest.raises(UsageError, match=r"model.hidden_size \(run has 16, asked for 32\)"):
        plan_run(None, ["model.hidden_size=32"], None, str(tmp_path / "run"), False)
    config, folder, saved = plan_run(None, ["train.max_steps=9"], None, str(tmp_path / "run"), False)
    assert config.train.max_steps == 9 and folder == tmp_path / "run" and saved["trainer"]["step"] == 6


def test_resume_auto_starts_fresh_then_resumes(tiny_corpus, tmp_path):
    overrides = [f"data.corpus={tiny_corpus}"]
    _, _, saved = plan_run(None, overrides, str(tmp_path / "run"), "auto", False)
    assert saved is None
    run(tiny_config(tiny_corpus), tmp_path / "run")
    _, _, saved = plan_run(None, overrides, str(tmp_path / "run"), "auto", False)
    assert saved["trainer"]["step"] == 6


def test_a_corpus_shorter_than_one_batch_says_how_much_is_needed(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("a few words\n" * 2)
    with pytest.raises(DataError, match=r"batch_size 4 x \(train.bptt 8 \+ 1\) = 36 are needed"):
        run(tiny_config(path), tmp_path / "run")


def test_plateau_schedule_divides_when_validation_stalls():
    config = load_config(None, ["optim.lr=20", "optim.lr_decay=0.25"]).optim
    schedule = Schedule(build_optimizer([torch.nn.Parameter(torch.zeros(1))], config), config)
    for loss, lr in [(5.0, 20), (4.0, 20), (4.5, 5), (4.2, 1.25), (3.9, 1.25)]:
        schedule.validated(loss)
        assert schedule.lr == pytest.approx(lr)
        assert schedule.optimizer.param_groups[0]["lr"] == pytest.approx(lr)


def test_step_schedule_follows_zaremba():
    config = load_config(None, ["optim.lr=1", "optim.schedule=step", "optim.lr_decay=0.5",
                                "optim.decay_start=4"]).optim
    schedule = Schedule(build_optimizer([torch.nn.Parameter(torch.zeros(1))], config), config)
    rates = []
    for epoch in range(1, 8):
        schedule.epoch_start(epoch)
        rates.append(schedule.optimizer.param_groups[0]["lr"])
    assert rates == [1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_sum_over_time_scales_the_gradient_by_the_window_length(tiny_corpus, tmp_path):
    """lr 1 with the loss summed over 8 time steps takes the same steps as lr 8 on the mean loss."""
    summed, _ = run(tiny_config(tiny_corpus, "optim.lr=0.1", "train.loss_reduction=sum_over_time",
                                "optim.clip=0"), tmp_path / "a")
    mean, _ = run(tiny_config(tiny_corpus, "optim.lr=0.8", "optim.clip=0"), tmp_path / "b")
    for a, b in zip(summed.model.parameters(), mean.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert train_losses(summed.history)[0] == train_losses(mean.history)[0]
