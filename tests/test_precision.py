"""train.precision: bf16 / fp16 autocast, loss scaling for fp16, and the refusals."""

import json

import pytest
import torch
from click.testing import CliRunner

from helpers import tiny_config, train_run
from rnnlm import runtime
from rnnlm.checkpoint import load_checkpoint
from rnnlm.cli import cli
from rnnlm.train import Trainer

# oneDNN has a bf16 LSTM only on CPUs with AVX-512: elsewhere bf16 runs through the reference cells,
# and the fused kernel's refusal is tested on its own below
BF16_IMPL = "model.impl=fused" if runtime.cpu_has_bf16_lstm() else "model.impl=reference"


def run(config, run_dir, resume=False):
    return train_run(config, run_dir, resume=resume)[0]


def losses(trainer):
    return [entry["loss"] for entry in trainer.history if "loss" in entry]


def test_bf16_follows_the_fp32_loss_curve(tiny_corpus, tmp_path):
    common = ["train.max_steps=80", "optim.name=adam", "optim.lr=0.01", "model.num_layers=2", BF16_IMPL]
    fp32 = losses(run(tiny_config(tiny_corpus, *common), tmp_path / "fp32"))
    bf16_run = run(tiny_config(tiny_corpus, *common, "train.precision=bf16"), tmp_path / "bf16")
    bf16 = losses(bf16_run)
    assert bf16 != fp32  # autocast really changed the arithmetic
    assert sum(bf16[-10:]) < sum(bf16[:10]) - 3  # it learns: 0.3 nats lower on average
    for step in range(0, 80, 10):  # within 2% of fp32, 10 steps at a time (bf16 keeps 8 bits of mantissa)
        assert sum(bf16[step: step + 10]) == pytest.approx(sum(fp32[step: step + 10]), rel=0.02), step
    assert all(p.dtype == torch.float32 for p in bf16_run.model.parameters())  # the weights stay fp32
    saved = load_checkpoint(tmp_path / "bf16" / "last.pt")
    assert all(h.dtype == torch.float32 for h in saved["hidden"])  # carried state too, so fp32 can resume it


def test_fp16_scales_the_loss_and_resumes_exactly(tiny_corpus, tmp_path):
    """fp16 needs model.impl=reference on a CPU; the scaler's state travels in the checkpoint."""
    common = ["model.impl=reference", "train.precision=fp16", "model.dropout=0.2", "model.num_layers=2"]
    full = run(tiny_config(tiny_corpus, *common, "train.max_steps=20"), tmp_path / "full")
    assert full.scaler.is_enabled() and full.scaler.get_scale() == 65536.0
    run(tiny_config(tiny_corpus, *common, "train.max_steps=10"), tmp_path / "split")
    assert load_checkpoint(tmp_path / "split" / "last.pt")["scaler"]["scale"] == 65536.0
    resumed = run(tiny_config(tiny_corpus, *common, "train.max_steps=20"), tmp_path / "split", resume=True)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert losses(resumed) == losses(full)


def test_an_fp16_overflow_skips_the_step_instead_of_stopping_the_run(tiny_corpus, tmp_path, monkeypatch):
    original = torch.amp.GradScaler.__init__
    monkeypatch.setattr(torch.amp.GradScaler, "__init__",
                        lambda self, *args, **kwargs: original(self, *args, **{**kwargs, "init_scale": 2.0 ** 24}))
    config = tiny_config(tiny_corpus, "model.impl=reference", "train.precision=fp16", "train.max_steps=12")
    trainer = Trainer(config, tmp_path / "run", progress=False, log=lambda m: None)
    try:
        trainer.setup()
        initial = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.fit()
    finally:
        trainer.close()
    # the first steps overflow: each halves the scale and is skipped, until the scaled gradients fit in fp16
    assert 2.0 ** 12 < trainer.scaler.get_scale() < 2.0 ** 24
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.model.parameters()))  # later steps count
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert load_checkpoint(tmp_path / "run" / "last.pt")["trainer"]["step"] == 12


def test_eval_in_bf16_is_close_to_fp32(tiny_corpus, tmp_path):
    runner = CliRunner()
    args = ["train", "--run-dir", tmp_path / "run", f"data.corpus={tiny_corpus}", "model.embed_size=8",
            "model.hidden_size=16", "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=20",
            "train.tensorboard=false", "data.valid_fraction=0.1", "data.test_fraction=0.1", BF16_IMPL]
    assert runner.invoke(cli, [str(a) for a in args]).exit_code == 0
    scores = {}
    for precision in ("fp32", "bf16"):
        result = runner.invoke(cli, ["eval", str(tmp_path / "run" / "best.pt"), "--json", "--precision", precision])
        assert result.exit_code == 0, result.output
        scores[precision] = json.loads(result.output)
    assert scores["bf16"]["precision"] == "bf16"
    assert scores["bf16"]["loss"] != scores["fp32"]["loss"]
    assert scores["bf16"]["loss"] == pytest.approx(scores["fp32"]["loss"], rel=0.01)


def test_fp16_with_the_fused_kernels_on_a_cpu_is_refused(tiny_corpus, tmp_path):
    args = ["train", "--run-dir", str(tmp_path / "run"), f"data.corpus={tiny_corpus}", "train.precision=fp16",
            "train.device=cpu", "train.tensorboard=false"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: train.precision=fp16 cannot run")
    assert "model.impl=reference" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bf16_that_runs_as_fp16_is_reported_once(tiny_corpus, tmp_path, monkeypatch):
    """On a GPU, cuDNN's LSTM under bf16 autocast returns fp16 (measured with torch 2.11): say so."""
    from rnnlm.models.lm import RNNLM

    original = RNNLM.forward
    def as_fp16(self, inputs, targets, state):
        out = original(self, inputs, targets, state)
        out.state = tuple(s.half() for s in out.state)
        return out
    monkeypatch.setattr(RNNLM, "forward", as_fp16)
    messages = []
    train_run(tiny_config(tiny_corpus, "train.precision=bf16", BF16_IMPL), tmp_path / "run", log=messages.append)
    warnings = [m for m in messages if "ran in fp16" in m]
    assert len(warnings) == 1 and "train.precision=fp16 adds it" in warnings[0]


def test_bf16_with_the_fused_lstm_is_refused_where_the_cpu_has_no_kernel(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16_lstm", lambda: False)
    args = ["train", "--run-dir", str(tmp_path / "run"), f"data.corpus={tiny_corpus}", "train.precision=bf16",
            "train.device=cpu", "train.tensorboard=false", "data.valid_fraction=0.1", "data.test_fraction=0.1",
            "model.embed_size=8", "model.hidden_size=16", "train.batch_size=4", "train.bptt=8", "train.epochs=0",
            "train.max_steps=2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: train.precision=bf16 cannot run torch's fused "
                                                             "LSTM on this CPU")
    assert not (tmp_path / "run" / "last.pt").exists()
    # a GRU, and the reference LSTM, are not refused: their kernels run bf16 on any CPU
    for other in ("model.cell=gru", "model.impl=reference"):
        again = CliRunner().invoke(cli, [*args, "--overwrite", other])
        assert again.exit_code == 0, again.output
    monkeypatch.setattr(runtime, "cpu_has_bf16_lstm", lambda: True)  # where oneDNN has the kernel: no refusal
    runtime.check_precision("bf16", torch.device("cpu"), "fused", "lstm")


def test_the_bf16_kernel_probe_draws_nothing_from_the_run_s_random_numbers():
    runtime.cpu_has_bf16_lstm.cache_clear()
    torch.manual_seed(5)
    runtime.cpu_has_bf16_lstm()
    after_probe = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_probe, torch.rand(3))
