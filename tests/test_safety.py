"""A run is never lost at the edges: non-finite and diverged losses, values that are not numbers."""

import json
import math

import pytest

from helpers import invoke, tiny_config
from rnnlm.checkpoint import load_checkpoint
from rnnlm.errors import TrainingError
from rnnlm.evaluate import EvalResult, perplexity
from rnnlm.models.lm import RNNLM
from test_train import run

TINY_CLI = ["model.embed_size=8", "model.hidden_size=16", "model.num_layers=1", "train.batch_size=4", "train.bptt=8",
            "train.epochs=0", "train.max_steps=30", "train.eval_batch_size=2", "train.log_every=1",
            "train.tensorboard=false", "train.device=cpu", "data.valid_fraction=0.1", "data.test_fraction=0.1"]


def poison(monkeypatch, factor, *, training):
    """Multiply the summed loss of the model's training (or validation) passes by `factor`."""
    original = RNNLM.forward

    def poisoned(self, inputs, targets, state):
        out = original(self, inputs, targets, state)
        if self.training == training:
            out.nll = out.nll * factor
        return out
    monkeypatch.setattr(RNNLM, "forward", poisoned)


def checkpoints(run_dir):
    return {name: (run_dir / name).read_bytes() for name in ("best.pt", "last.pt")}


def test_a_nan_validation_stops_the_run_and_is_never_best(tiny_corpus, tmp_path, monkeypatch):
    run(tiny_config(tiny_corpus), tmp_path / "run")
    before = checkpoints(tmp_path / "run")
    poison(monkeypatch, float("nan"), training=False)
    with pytest.raises(TrainingError, match=r"non-finite validation loss \(nan\) at step 7 \(epoch 1\); stopped "
                                            r"without saving"):
        run(tiny_config(tiny_corpus, "train.max_steps=12", "train.eval_every=1"), tmp_path / "run", resume=True)
    assert checkpoints(tmp_path / "run") == before


def test_the_nan_validation_of_the_issue_exits_1_and_saves_nothing(tiny_corpus, tmp_path):
    result = invoke("train", "--run-dir", tmp_path / "run", f"data.corpus={tiny_corpus}", *TINY_CLI,
                    "model.cell=rnn", "model.nonlinearity=relu", "optim.lr=1e30", "optim.clip=0",
                    "train.eval_every=1")
    assert result.exit_code == 1, result.output
    assert "Error: non-finite" in result.output and "Try a lower optim.lr" in result.output
    assert "(the run had not written a checkpoint yet)" in result.output  # there is no good one to keep
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_a_finite_divergence_of_the_training_loss_stops_after_three_log_points(tiny_corpus, tmp_path, monkeypatch):
    run(tiny_config(tiny_corpus), tmp_path / "run")
    before = checkpoints(tmp_path / "run")
    poison(monkeypatch, 1e6, training=True)  # a loss of millions of nats: finite, and far above 2 ln V + 5
    with pytest.raises(TrainingError, match=r"the run diverged at step 9 \(epoch 1\): mean training loss .* for 3 "
                                            r"log points in a row, above 12\.\d\d .*last good checkpoint"):
        run(tiny_config(tiny_corpus, "train.max_steps=30", "train.eval_every=10"), tmp_path / "run", resume=True)
    assert checkpoints(tmp_path / "run") == before


def test_a_short_spike_of_the_training_loss_is_not_a_divergence(tiny_corpus, tmp_path, monkeypatch):
    original = RNNLM.forward
    def spike_at_steps_3_and_4(self, inputs, targets, state):
        out = original(self, inputs, targets, state)
        if self.training and trainer.step in (2, 3):
            out.nll = out.nll * 1e6
        return out
    monkeypatch.setattr(RNNLM, "forward", spike_at_steps_3_and_4)
    from rnnlm.train import Trainer
    trainer = Trainer(tiny_config(tiny_corpus, "train.max_steps=8", "optim.clip=0.01"), tmp_path / "run",
                      progress=False, log=lambda m: None)  # built here: the spike reads its step while it trains
    try:
        trainer.setup()
        summary = trainer.fit()
    finally:
        trainer.close()
    losses = [entry["loss"] for entry in trainer.history if "loss" in entry]
    assert sum(loss > trainer.divergence_limit for loss in losses) == 2 and summary.steps == 8


def test_a_diverged_validation_stops_at_once(tiny_corpus, tmp_path, monkeypatch):
    run(tiny_config(tiny_corpus), tmp_path / "run")
    before = checkpoints(tmp_path / "run")
    poison(monkeypatch, 1e30, training=False)
    with pytest.raises(TrainingError, match=r"diverged at step 8 \(epoch 1\): validation loss \d.*e\+3\d, above"):
        run(tiny_config(tiny_corpus, "train.max_steps=12", "train.eval_every=2"), tmp_path / "run", resume=True)
    assert checkpoints(tmp_path / "run") == before


def test_the_finite_divergence_of_the_issue_ends_in_one_line(tiny_corpus, tmp_path):
    result = invoke("train", "--run-dir", tmp_path / "run", f"data.corpus={tiny_corpus}", *TINY_CLI,
                    "optim.lr=1e8", "train.eval_every=10")  # the loss stays finite, near 1e7
    assert result.exit_code == 1, result.output
    assert "Error: the run diverged at step" in result.output and "OverflowError" not in result.output
    assert not (tmp_path / "run" / "best.pt").exists()


def test_no_perplexity_overflows():
    assert perplexity(math.log(20.0)) == pytest.approx(20.0)
    assert perplexity(709.0) == pytest.approx(math.exp(709.0))
    assert perplexity(9e29) == math.inf and math.isnan(perplexity(math.nan))
    assert EvalResult(nll=9e29 * 100, tokens=100, chars=100, bytes=100).ppl == math.inf


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny char model's best.pt and the text it was trained on."""
    from conftest import TINY_TEXT
    folder = tmp_path_factory.mktemp("trained")
    corpus = folder / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    run(tiny_config(corpus), folder / "run")
    return folder / "run" / "best.pt", corpus


def with_decoder_scaled(checkpoint, factor, path):
    """A copy of `checkpoint` whose decoder weights are multiplied by `factor` (NaN: a damaged model)."""
    from rnnlm.checkpoint import save_checkpoint
    payload = load_checkpoint(checkpoint)
    key = next(name for name in payload["model"] if name.startswith("decoder") and name.endswith("weight"))
    payload["model"][key] = payload["model"][key] * factor
    save_checkpoint(payload, path)
    return path


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("option, value", [("--temperature", "nan"), ("--temperature", "inf"),
                                           ("--temperature", "-inf"), ("--top-p", "nan"), ("--seed", 2**70),
                                           ("--seed", -(2**63) - 1), ("--length", "inf")])
def test_sample_refuses_what_is_not_a_number_in_range(trained, option, value):
    result = invoke("sample", trained[0], "--length", 5, option, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


def test_a_huge_seed_is_refused_by_train_as_flag_and_as_key(tiny_corpus, tmp_path):
    flag = invoke("train", "--run-dir", tmp_path / "a", f"data.corpus={tiny_corpus}", *TINY_CLI, "--seed", 2**70)
    assert flag.exit_code == 2 and "Invalid value for '--seed'" in flag.output, flag.output
    key = invoke("train", "--run-dir", tmp_path / "b", f"data.corpus={tiny_corpus}", *TINY_CLI, f"train.seed={2**70}")
    assert key.exit_code == 2 and "train.seed must be in [-2**63, 2**64 - 1]" in key.output, key.output
    for name, seed in [("c", 2**64 - 1), ("d", -(2**63))]:  # torch's own range, which older runs may have used
        edge = invoke("train", "--run-dir", tmp_path / name, f"data.corpus={tiny_corpus}", *TINY_CLI,
                      "train.max_steps=2", f"train.seed={seed}")
        assert edge.exit_code == 0, edge.output
        assert invoke("sample", tmp_path / name / "last.pt", "--length", 3, "--seed", seed).exit_code == 0


def test_eval_json_is_valid_json_when_the_perplexity_overflows(trained, tmp_path):
    checkpoint = with_decoder_scaled(trained[0], 1e4, tmp_path / "sharp.pt")  # loss in the thousands of nats
    result = invoke("eval", checkpoint, "--split", "valid", "--json")
    assert result.exit_code == 0, result.output
    numbers = strict_json(result.output)
    assert numbers["loss"] > 710 and numbers["ppl"] is None and numbers["bits_per_token"] > 1000


def test_eval_of_a_nan_model_is_an_error_not_a_number(trained, tmp_path):
    checkpoint = with_decoder_scaled(trained[0], float("nan"), tmp_path / "nan.pt")
    for extra in ([], ["--json"]):
        result = invoke("eval", checkpoint, "--split", "valid", *extra)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: the forward loss on ") and "not finite" in result.output
        assert "NaN" not in result.output and "nan" not in result.output.split("not finite")[1]


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_as_such(tmp_path):
    import torch
    marker = tmp_path / "ran"
    torch.save({"format": "rnnlm-checkpoint", "format_version": 1, "model": RunsCode(marker)}, tmp_path / "evil.pt")
    result = invoke("eval", tmp_path / "evil.pt")
    assert result.exit_code == 1
    assert "not an rnnlm checkpoint: it holds Python objects rnnlm does not load" in result.output, result.output
    assert not marker.exists()


@pytest.mark.parametrize("text, key, lines", [("optim:\n  lr: 1.0\n  clip: 0.5\n  lr: 2.0\n", "lr", (2, 4)),
                                              ("optim:\n  lr: 1.0\ntrain:\n  seed: 1\noptim:\n  clip: 0.5\n",
                                               "optim", (1, 5))])
def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path, text, key, lines):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    result = invoke("config", "--config", path)
    assert result.exit_code == 2
    assert f"at line {lines[1]}, column " in result.output
    assert f"duplicate key '{key}' (first on line {lines[0]})" in result.output


def cached_ids(cache):
    return sorted((cache / "ids").glob("*.ids"))


def valid_loss(checkpoint):
    result = invoke("eval", checkpoint, "--split", "valid", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["loss"]


def test_a_token_cache_rewritten_in_place_is_rebuilt(trained, monkeypatch, tmp_path):
    import numpy as np
    monkeypatch.setenv("RNNLM_CACHE", str(tmp_path / "cache"))
    right = valid_loss(trained[0])
    for path in cached_ids(tmp_path / "cache"):  # same size, valid ids, other text
        ids = np.fromfile(path, dtype=np.uint16)
        ids[::-1].tofile(path)
    assert valid_loss(trained[0]) == right
    for path in cached_ids(tmp_path / "cache"):  # ids beyond the vocabulary: an IndexError in the embedding
        np.full(path.stat().st_size // 2, 60000, dtype=np.uint16).tofile(path)
    assert valid_loss(trained[0]) == right


def test_a_token_cache_entry_without_a_checksum_is_rebuilt(trained, monkeypatch, tmp_path):
    monkeypatch.setenv("RNNLM_CACHE", str(tmp_path / "cache"))
    right = valid_loss(trained[0])
    (path,) = cached_ids(tmp_path / "cache")
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({k: v for k, v in meta.items() if k != "sha256"}))
    path.write_bytes(path.read_bytes()[::-1])  # an older rnnlm could not have noticed this
    assert valid_loss(trained[0]) == right
    assert json.loads(path.with_suffix(".json").read_text()) == meta


def test_partial_cache_files_of_dead_processes_are_removed(tiny_corpus, monkeypatch, tmp_path):
    import os
    import subprocess
    import sys
    from rnnlm.data.corpus import load_corpus
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    cache = tmp_path / "cache"
    monkeypatch.setenv("RNNLM_CACHE", str(cache))
    from rnnlm.data.registry import writer_tag
    host = writer_tag().rsplit("-", 1)[0]
    # [dead writer of this host, live writer (this test), a writer on another host sharing the cache]
    leftovers = {"ids": [f"a.ids.{host}-{dead}.part", f"b.ids.{host}-{os.getpid()}.part", f"e.ids.other-{dead}.part"],
                 "tokenizers": [f"c.json.{host}-{dead}.part", f"d.json.{host}-{os.getpid()}.part",
                                f"f.json.other-{dead}.part"],
                 "tinyshakespeare": [f"input.txt.{host}-{dead}.download", f"input.txt.{host}-{os.getpid()}.download",
                                     f"input.txt.other-{dead}.download"]}
    for folder, names in leftovers.items():
        (cache / folder).mkdir(parents=True)
        for name in names:
            (cache / folder / name).write_bytes(b"partial")
    config = tiny_config(tiny_corpus)
    load_corpus(config.data, config.tokenizer)
    left = {path.name for path in cache.rglob("*") if path.name.endswith((".part", ".download"))}
    assert left == {name for names in leftovers.values() for name in names[1:]}


# rnnlm's entry point behind a slow interpreter teardown, as torch's finalizers make it: by then Python has
# put back the default signal handlers, so a second Ctrl-C killed the process (exit -2 instead of 130)
SLOW_TEARDOWN = """
import time
class SlowToTearDown:
    def __del__(self):
        time.sleep(5)
keep = SlowToTearDown()
from rnnlm.cli import main
main()
"""


@pytest.mark.slow
def test_a_second_ctrl_c_after_the_save_still_exits_130(tiny_corpus, tmp_path):
    import signal
    import time
    from test_cli import start_long_training
    run_dir = tmp_path / "run"
    process = start_long_training(tiny_corpus, run_dir, until_step=5, start=("-c", SLOW_TEARDOWN))
    process.send_signal(signal.SIGINT)
    for line in process.stderr:
        if line.startswith("Interrupted: stopped at step"):  # saved; the process is on its way out
            break
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 130, rest
    assert "KeyboardInterrupt" not in rest and "Traceback" not in rest
    assert load_checkpoint(run_dir / "last.pt")["trainer"]["step"] >= 5
