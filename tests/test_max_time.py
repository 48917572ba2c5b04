"""train.max_time: the budget's parsing and refusals, the stop at the budget, the cosine over the budget, and
the clock going on across a resume. The trainer's clock is a fake one here, driven by the run itself, so
that nothing depends on how fast this machine is."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from helpers import invoke, tiny_config

from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import Config, parse_duration
from rnnlm.train import Trainer


class RunClock:
    """Seconds as the run itself counts them: each training step takes one, each validation (with its
    checkpoint writes) `validation` more, so that the budget runs out at a step known in advance."""

    def __init__(self, validation: float = 0.0) -> None:
        self.validation = validation
        self.trainer: Trainer | None = None

    def __call__(self) -> float:
        assert self.trainer is not None
        validations = sum("val_loss" in entry for entry in self.trainer.history)  # counted from the record in it
        return self.trainer.step * 1.0 + self.validation * validations


def timed_run(config: Config, run_dir: Path, clock: RunClock, *, resume: bool = False, hook: Any = None):
    """One training run on `clock`; `hook(trainer)` runs between setup and fit. Returns (trainer, log lines)."""
    lines: list[str] = []
    saved = load_checkpoint(run_dir / "last.pt") if resume else None
    trainer = Trainer(config, run_dir, resume_from=saved, progress=False, log=lines.append, clock=clock)
    clock.trainer = trainer
    try:
        trainer.setup()
        if hook:
            hook(trainer)
        trainer.fit()
    finally:
        trainer.close()
    return trainer, lines


ON_TIME_ALONE = ("train.epochs=0", "train.max_steps=0")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("", 0.0),
        ("0", 0.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("2m30s", 150.0),
        (" 10M ", 600.0),
    ],
)
def test_durations_with_their_units(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("90", "must be a number with its unit, h, m or s"),
        ("-5m", "must not be negative"),
        ("ten minutes", "must be a number with its unit"),
        ("30s1m", "must be a number with its unit"),
    ],
)
def test_a_bad_budget_is_one_line(value, says):
    result = invoke("config", f"train.max_time={value}")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("Error: invalid configuration: train.max_time")
    assert says in result.output


def test_a_budget_alone_is_a_length(tiny_corpus):
    assert tiny_config(tiny_corpus, *ON_TIME_ALONE, "train.max_time=10m").train.max_time == "10m"
    result = invoke("config", *ON_TIME_ALONE)
    assert result.exit_code == 2 and "train.epochs, train.max_steps and train.max_time cannot all be 0" in result.output


def test_the_run_stops_at_the_budget_with_a_final_validation_and_checkpoints(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, *ON_TIME_ALONE, "train.max_time=30s", "train.eval_every=10")
    trainer, lines = timed_run(config, tmp_path / "run", RunClock(validation=2.0))
    # steps 1-10 and 11-20 take 10 s each, and each validation 2 s: 24 s at step 20. The budget keeps the final
    # validation's 2 s (the last one's cost) free, so it stops after step 24 (24 + 4 + 2 = 30), and validates
    assert trainer.step == 24
    assert [e["step"] for e in trainer.history if "val_loss" in e] == [10, 20, 24]
    assert any(line.startswith("time budget train.max_time=30s reached at step 24") for line in lines)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["trainer"]["step"] == 24 and last["trainer"]["time_spent"] == 30.0  # the whole budget, no more
    assert (tmp_path / "run" / "best.pt").exists()


def test_whichever_comes_first_stops_the_run(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, "train.max_steps=5", "train.max_time=1h")
    trainer, lines = timed_run(config, tmp_path / "run", RunClock())
    assert trainer.step == 5 and not any("time budget" in line for line in lines)


def test_the_cosine_runs_over_the_budget(tiny_corpus, tmp_path):
    config = tiny_config(
        tiny_corpus,
        *ON_TIME_ALONE,
        "train.max_time=40s",
        "train.eval_every=2",
        "optim.name=adam",
        "optim.lr=0.01",
        "optim.min_lr=0.001",
        "optim.schedule=cosine",
    )
    rates: dict[int, float] = {}  # by the steps done, on the clock as many seconds

    def record(trainer: Trainer) -> None:
        schedule, step_start = trainer.schedule, trainer.schedule.step_start
        schedule.step_start = lambda step, progress: (step_start(step, progress), rates.setdefault(step, schedule.lr))[
            0
        ]

    trainer, _ = timed_run(config, tmp_path / "run", RunClock(), hook=record)
    assert trainer.step == 40  # on the fake clock the validations cost nothing: the whole budget trains
    o = config.optim
    assert rates[0] == pytest.approx(o.lr)
    assert rates[20] == pytest.approx(o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rates[39] == pytest.approx(o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_a_resumed_run_counts_the_time_already_spent(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    budget = ("train.epochs=0", "train.max_time=20s", "train.eval_every=4")
    first, _ = timed_run(tiny_config(tiny_corpus, *budget, "train.max_steps=8"), run_dir, RunClock())
    assert first.step == 8 and load_checkpoint(run_dir / "last.pt")["trainer"]["time_spent"] == 8.0  # 40%
    resumed, lines = timed_run(tiny_config(tiny_corpus, *budget, "train.max_steps=0"), run_dir, RunClock(), resume=True)
    assert resumed.step == 20  # the other 60%: 12 steps
    assert any(line.startswith("time budget train.max_time=20s reached at step 20") for line in lines)
    assert load_checkpoint(run_dir / "last.pt")["trainer"]["time_spent"] == 20.0


def _rank(rank: int, port: int, corpus: str, run_dir: str, results: Any) -> None:
    """One of two ranks on a budget of 9 s: rank 0's clock goes at 1 s a step, rank 1's ten times slower."""
    import os

    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    from rnnlm.config import load_config

    config = load_config(
        None,
        [
            f"data.corpus={corpus}",
            "model.embed_size=8",
            "model.hidden_size=16",
            "model.num_layers=1",
            "data.valid_fraction=0.1",
            "data.test_fraction=0.1",
            "train.batch_size=2",
            "train.bptt=8",
            *ON_TIME_ALONE,
            "train.max_time=9s",
            "train.eval_every=2",
            "train.log_every=2",
            "train.dist_timeout=30",
            "train.tensorboard=false",
            "optim.name=adam",
            "optim.lr=0.01",
            "optim.schedule=cosine",
        ],
    )
    trainer = Trainer(
        config, run_dir, progress=False, log=lambda m: None, clock=lambda: trainer.step * (1.0, 0.1)[rank]
    )
    try:
        trainer.setup()
        trainer.fit()
        results.put((rank, trainer.step, trainer.schedule.lr))
    finally:
        trainer.close()


@pytest.mark.slow
def test_under_torchrun_rank_0s_clock_stops_every_rank_at_the_same_step(tiny_corpus, tmp_path):
    import multiprocessing
    import socket

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tiny_corpus.read_text() * 4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_rank, args=(r, port, str(corpus), str(tmp_path / "run"), results)) for r in (0, 1)
    ]
    for w in workers:
        w.start()
    got = sorted(results.get(timeout=300) for _ in workers)  # spawning two workers on a loaded machine is slow
    for w in workers:
        w.join()
    # the clock is shared at log points (every 2 steps): rank 0's reads 10 s >= 9 s after step 10, and rank 1,
    # whose own clock reads 1 s, stops there too, having set the same rates from rank 0's readings
    assert [(rank, step) for rank, step, _ in got] == [(0, 10), (1, 10)]
    assert got[0][2] == got[1][2]
