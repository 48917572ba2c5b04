"""Golden runs: tiny fixed-seed trainings whose loss curves must match the ones stored in tests/golden/.

Any change that alters what training computes (an initialisation, a dropout draw, the data order, the loss,
a schedule, the optimizer) moves these curves; a refactoring that must not alter training leaves them alone.
After an intended change to training, regenerate the file, and commit it with the change saying why:

    PYTHONPATH=$PWD python3 tests/test_golden.py --update

The test itself never writes the file.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import TINY_MODEL, invoke

GOLDEN = Path(__file__).parent / "golden" / "training_curves.json"

# The tolerance is for rounding, not for changes. On one machine these runs are bit-identical from run to
# run (one thread, float32, fixed seeds). Another CPU, BLAS or oneDNN build may add in another order (other
# vector widths and blocking), which moves each float32 result by about one unit in the last place (1.2e-7
# relative). Measured here, such noise stays that small over 40 steps: every initial weight moved by one
# unit in the last place changes no logged loss by more than 2.2e-7, two threads instead of one by 1.7e-7,
# and TensorBoard stores the losses as float32 (6e-8). 1e-5 is 45 times that, while training changed on
# purpose moves the curves by more: even optim.lr 1.0005 times larger moves them by up to 1.7e-4.
RTOL = 1e-5

COMMON = [*TINY_MODEL, "data.valid_fraction=0.1", "data.test_fraction=0.1", "train.batch_size=4", "train.bptt=8",
          "train.epochs=0", "train.max_steps=40", "train.eval_every=20", "train.eval_batch_size=2",
          "train.log_every=1", "train.tensorboard=true", "train.device=cpu", "train.num_threads=1",
          "train.precision=fp32", "train.seed=1234"]

CASES = {
    # torch's fused LSTM with rnnlm's fused CPU loss, two layers, dropout and DropConnect draws, variable-length
    # windows (lr scaled by length), gradient clipping, SGD under the plateau schedule
    "lstm_fused_sgd": ["model.cell=lstm", "model.impl=fused", "model.num_layers=2", "model.dropout=0.2",
                       "model.weight_drop=0.2", "train.variable_bptt=true", "optim.name=sgd", "optim.lr=2.0",
                       "optim.clip=0.25", "optim.schedule=plateau"],
    # the readable GRU cells, word tokens under an adaptive softmax with two tail clusters, Adam with weight
    # decay under a cosine schedule with warmup
    "gru_reference_adaptive_adam": ["model.cell=gru", "model.impl=reference", "tokenizer.kind=word",
                                    "model.softmax=adaptive", "model.cutoffs=[4, 12]", "optim.name=adam",
                                    "optim.lr=0.01", "optim.weight_decay=0.01", "optim.schedule=cosine",
                                    "optim.warmup_steps=5", "optim.clip=1.0"],
}


def train_curves(corpus: Path, run_dir: Path, overrides: list[str]) -> dict[str, dict[str, float]]:
    """Train through the real CLI; the losses TensorBoard logged, as {"train_loss" | "val_loss": {step: loss}}
    (steps as strings, as JSON keeps them)."""
    result = invoke("train", "--run-dir", run_dir, "--no-progress", f"data.corpus={corpus}", *COMMON, *overrides)
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag.replace("/", "_"): {str(e.step): e.value for e in events.Scalars(tag)}
            for tag in ("train/loss", "val/loss")}


def first_difference(name: str, tag: str, expected: dict[str, float], got: dict[str, float]) -> str | None:
    """Where `got` leaves `expected` (a step logged or missing, or a loss outside RTOL), in words; None if nowhere."""
    if list(got) != list(expected):
        return f"{name} {tag}: logged at steps {list(got)}, the golden run at {list(expected)}"
    for step, want in expected.items():
        value = got[step]
        if not math.isclose(value, want, rel_tol=RTOL):
            return (f"{name} {tag}: step {step} has loss {value!r}, the golden run {want!r} (relative difference "
                    f"{abs(value - want) / abs(want):.2e} > {RTOL:g}); if training was meant to change, regenerate "
                    f"with: PYTHONPATH=$PWD python3 tests/test_golden.py --update")
    return None


def golden_cases() -> dict[str, dict[str, dict[str, float]]]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]


def test_the_golden_file_holds_every_case_and_only_those():
    assert set(golden_cases()) == set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_a_golden_run_trains_as_recorded(tiny_corpus, tmp_path, name):
    golden = golden_cases()[name]
    curves = train_curves(tiny_corpus, tmp_path / name, CASES[name])
    assert list(curves["train_loss"]) == [str(step) for step in range(1, 41)]  # log_every=1
    assert list(curves["val_loss"])[-1] == "40"  # the final validation
    for tag in ("train_loss", "val_loss"):
        difference = first_difference(name, tag, golden[tag], curves[tag])
        assert difference is None, difference


def update() -> None:
    """Train every case in a scratch folder, as the test does, and rewrite the golden file."""
    import os

    from conftest import TINY_TEXT

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["RNNLM_CACHE"] = str(Path(scratch) / "cache")  # as the tests' isolated_env fixture does
        os.environ.pop("RNNLM_DATA", None)
        torch.set_num_threads(1)
        corpus = Path(scratch) / "tiny.txt"
        corpus.write_text(TINY_TEXT, encoding="utf-8")
        cases = {name: train_curves(corpus, Path(scratch) / name, overrides) for name, overrides in CASES.items()}
    record = {
        "about": "tests/test_golden.py compares training with these curves; regenerate only for an intended change "
                 "to training: PYTHONPATH=$PWD python3 tests/test_golden.py --update",
        "recorded_with": {"torch": torch.__version__, "python": platform.python_version(),
                          "machine": platform.machine()},
        "cases": cases,
    }
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: PYTHONPATH=$PWD python3 tests/test_golden.py --update")
    update()
