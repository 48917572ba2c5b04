import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import TINY_MODEL, invoke

TINY = [*TINY_MODEL, "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=6",
        "train.tensorboard=false", "data.valid_fraction=0.1", "data.test_fraction=0.1"]


def train(corpus, run_dir, *extra):
    return invoke("train", "--run-dir", run_dir, f"data.corpus={corpus}", *TINY, *extra)


def test_without_a_test_split_the_suggested_eval_is_of_the_validation_split(tiny_corpus, tmp_path):
    result = train(tiny_corpus, tmp_path / "run", "data.test_fraction=0")
    assert result.exit_code == 0, result.output
    suggested = result.output.split("rnnlm eval ")[1].split()  # [checkpoint, "--split", name]
    assert suggested[1:] == ["--split", "valid"]
    scored = invoke("eval", *suggested, "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["tokens"] > 0
    empty = invoke("eval", suggested[0], "--split", "test")
    assert empty.exit_code != 0 and "Error:" in empty.output  # what the old suggestion led to


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["eval"], ["score"]])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_train_sample_eval_from_the_checkpoint_alone(tiny_corpus, tmp_path):
    result = train(tiny_corpus, tmp_path / "run", "--seed", 3)
    assert result.exit_code == 0, result.output
    assert "Done: 6 steps" in result.output
    assert "best.pt --split test" in result.output
    moved = tmp_path / "elsewhere.pt"
    (tmp_path / "run" / "best.pt").rename(moved)
    text = tmp_path / "other.txt"
    text.write_text("Speak, speak.\nAll:\n")
    tiny_corpus.unlink()  # sampling and scoring a text need nothing but the checkpoint

    first = invoke("sample", moved, "--prompt", "All:", "--length", 40, "--seed", 1, "--temperature", 0.8)
    again = invoke("sample", moved, "--prompt", "All:", "--length", 40, "--seed", 1, "--temperature", 0.8)
    assert first.exit_code == 0 and first.output == again.output and first.output.startswith("All:")

    scored = invoke("eval", moved, "--text", text, "--json")
    assert scored.exit_code == 0, scored.output
    numbers = json.loads(scored.output)
    assert numbers["tokens"] == numbers["chars"] == len(text.read_text())
    assert numbers["ppl"] == pytest.approx(2 ** numbers["bits_per_token"], rel=1e-6)


def test_eval_on_a_split_reports_every_number(tiny_corpus, tmp_path):
    assert train(tiny_corpus, tmp_path / "run").exit_code == 0
    result = invoke("eval", tmp_path / "run" / "best.pt", "--split", "valid")
    assert result.exit_code == 0, result.output
    assert "(valid split)" in result.output and "batch size 1 (full left context)" in result.output
    for label in ("nats/token", "perplexity", "bits/token", "bits/char"):
        assert label in result.output


def test_several_samples_are_numbered(tiny_corpus, tmp_path):
    train(tiny_corpus, tmp_path / "run")
    result = invoke("sample", tmp_path / "run" / "last.pt", "--num-samples", 2, "--length", 10, "--seed", 1)
    assert result.exit_code == 0 and "----- sample 2 -----" in result.output


def test_sampling_from_bf16_weights(tiny_corpus, tmp_path):
    train(tiny_corpus, tmp_path / "run")
    result = invoke("sample", tmp_path / "run" / "last.pt", "--length", 30, "--seed", 1, "--precision", "bf16",
                    "--prompt", "All:")
    assert result.exit_code == 0 and result.output.startswith("All:") and len(result.output) == len("All:") + 30 + 1
    refused = invoke("sample", tmp_path / "run" / "last.pt", "--precision", "fp16")
    assert refused.exit_code == 2 and "'fp16' is not one of 'fp32', 'bf16'" in refused.output


def test_unknown_key_exits_2_and_suggests(tiny_corpus, tmp_path):
    result = train(tiny_corpus, tmp_path / "run", "model.hiden_size=3")
    assert result.exit_code == 2
    assert "Error: invalid configuration: unknown key 'model.hiden_size' (did you mean 'model.hidden_size'?)" \
        in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,fragment", [
    ("optim.lr=-1", "optim.lr must be positive"),
    ("model.num_layers=0", "model.num_layers must be at least 1"),
    ("model.tie_weights=true", "model.tie_weights needs model.embed_size == model.hidden_size"),
])
def test_bad_values_exit_2(tiny_corpus, tmp_path, override, fragment):
    result = train(tiny_corpus, tmp_path / "run", override)
    assert result.exit_code == 2 and fragment in result.output


def test_missing_corpus_exits_1(tmp_path):
    result = train(tmp_path / "nope.txt", tmp_path / "run")
    assert result.exit_code == 1 and "does not exist" in result.output


@pytest.mark.parametrize("content,fragment", [
    (b"", "the training split has 0 tokens"),
    (b"tiny\n", "are needed"),
    (b"caf\xc3\xa9 ok\n" * 400 + b"bad \xff byte\n", "not UTF-8 text: invalid byte 0xff at byte offset 3604"),
    (b"text\n" * 100 + b"\x00\x01\x02binary", "NUL byte at byte offset 500"),
], ids=["empty", "too-short", "not-utf8", "binary"])
def test_bad_corpora_exit_1(tmp_path, content, fragment):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    result = train(path, tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert fragment in result.output and result.output.startswith("Error: ")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_run_folder_is_not_overwritten_by_accident(tiny_corpus, tmp_path):
    train(tiny_corpus, tmp_path / "run")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    result = train(tiny_corpus, tmp_path / "run")
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert train(tiny_corpus, tmp_path / "run", "--overwrite").exit_code == 0


def test_a_stop_as_the_trainer_is_built_leaves_the_folder_free_and_the_old_run_in_place(tiny_corpus, tmp_path,
                                                                                        monkeypatch):
    from rnnlm.runs import RunFolder
    from rnnlm.train import Trainer

    train(tiny_corpus, tmp_path / "run")
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("best.pt", "last.pt")}
    built = Trainer.__init__

    def interrupted_as_it_returns(self, *args, **kwargs):
        built(self, *args, **kwargs)
        raise KeyboardInterrupt  # a Ctrl-C landing between the construction and the try that closes it
    monkeypatch.setattr(Trainer, "__init__", interrupted_as_it_returns)
    result = train(tiny_corpus, tmp_path / "run", "--overwrite")
    assert result.exit_code == 130, result.output
    assert {name: (tmp_path / "run" / name).read_bytes() for name in before} == before
    assert not (tmp_path / "run" / ".replaced").exists()
    folder = RunFolder(tmp_path / "run")
    folder.lock()  # free: the trainer holds nothing
    folder.release()


@pytest.mark.parametrize("content,fragment", [
    (b"garbage", "cannot be read as a checkpoint"),
    (b"", "is empty"),
])
def test_bad_checkpoints_exit_1(tmp_path, content, fragment):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    for command in (["sample", path], ["eval", path]):
        result = invoke(*command)
        assert result.exit_code == 1 and fragment in result.output


def test_missing_checkpoint_is_a_usage_error(tmp_path):
    result = invoke("sample", tmp_path / "missing.pt")
    assert result.exit_code == 2 and "does not exist" in result.output


def test_resume_through_the_cli(tiny_corpus, tmp_path):
    train(tiny_corpus, tmp_path / "run")
    result = invoke("train", "--resume", tmp_path / "run", "train.max_steps=9")
    assert result.exit_code == 0, result.output
    assert "Done: 9 steps" in result.output
    refused = invoke("train", "--resume", tmp_path / "run", "model.hidden_size=64")
    assert refused.exit_code == 2 and "run has 16, asked for 64" in refused.output


# How long a spawned rnnlm may take to finish after a signal, or a short resume: generous, since a loaded
# 2-core machine (other jobs, torch's import) took over 60 s; a hang still fails, only later.
WAIT = 240


def start_long_training(tiny_corpus, run_dir, until_step, start=("-m", "rnnlm")):
    """`rnnlm train` in a subprocess (`python START train ...`), returned once it has validated at step
    `until_step`."""
    corpus = run_dir.parent / "long.txt"
    corpus.write_text(tiny_corpus.read_text() * 20)
    args = [sys.executable, *start, "train", "--run-dir", str(run_dir), f"data.corpus={corpus}",
            *TINY, "train.max_steps=100000", "train.eval_every=5"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stderr:
        if line.startswith(f"step {until_step} "):
            break
    return process


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_real_signal_saves_and_the_run_resumes(tiny_corpus, tmp_path, sig, code):
    run_dir = tmp_path / "run"
    process = start_long_training(tiny_corpus, run_dir, until_step=5)
    process.send_signal(sig)
    _, rest = process.communicate(timeout=WAIT)
    assert process.returncode == code, rest
    assert "Traceback" not in rest
    assert f"rnnlm train --resume {run_dir}" in rest
    from rnnlm.checkpoint import load_checkpoint
    stopped_at = load_checkpoint(run_dir / "last.pt")["trainer"]["step"]
    assert stopped_at >= 5
    resumed = subprocess.run([sys.executable, "-m", "rnnlm", "train", "--resume", str(run_dir),
                              f"train.max_steps={stopped_at + 5}"], capture_output=True, text=True, timeout=WAIT)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Done: {stopped_at + 5:,} steps" in resumed.stderr


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_corrupts_nothing(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    process = start_long_training(tiny_corpus, run_dir, until_step=10)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=WAIT)
    assert process.returncode == 130, rest
    assert "Traceback" not in rest
    from rnnlm.checkpoint import load_checkpoint
    assert load_checkpoint(run_dir / "last.pt")["trainer"]["step"] >= 10  # intact, whichever save it is
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_during_training_is_reported_and_keeps_the_old_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    import errno
    from rnnlm import checkpoint
    assert train(tiny_corpus, tmp_path / "run").exit_code == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    def disk_full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    result = invoke("train", "--resume", tmp_path / "run", "train.max_steps=12")
    assert result.exit_code == 1
    assert "Error: no space left on device while writing " in result.output
    assert "; the previous checkpoint is intact" in result.output
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_a_second_real_trainer_on_a_running_folder_is_refused(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    process = start_long_training(tiny_corpus, run_dir, until_step=5)
    try:
        for extra in (["--run-dir", str(run_dir), f"data.corpus={tiny_corpus}", *TINY, "model.cell=gru"],
                      ["--resume", str(run_dir)]):
            second = subprocess.run([sys.executable, "-m", "rnnlm", "train", *extra], capture_output=True, text=True,
                                    timeout=WAIT)
            assert second.returncode == 1, second.stderr
            assert second.stderr == (f"Error: run folder {run_dir} is in use by process {process.pid}: another rnnlm "
                                     f"train holds it; wait for it to end or stop it, or choose another --run-dir\n")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=WAIT)
    from rnnlm.checkpoint import load_checkpoint
    assert load_checkpoint(run_dir / "last.pt")["config"]["model"]["cell"] == "lstm"
    assert "cell: lstm" in (run_dir / "config.yaml").read_text()
