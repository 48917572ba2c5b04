"""Small builders shared by the tests: tiny configs, the CLI in-process, one training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from click.testing import CliRunner, Result

from rnnlm.checkpoint import load_checkpoint
from rnnlm.cli import cli
from rnnlm.config import Config, load_config
from rnnlm.train import Trainer, TrainSummary

TINY_MODEL = ["model.embed_size=8", "model.hidden_size=16", "model.num_layers=1"]


def tiny_config(corpus: Path | str, *overrides: str) -> Config:
    """A config that trains in well under a second on the tiny corpus."""
    base = [f"data.corpus={corpus}", "data.valid_fraction=0.1", "data.test_fraction=0.1", *TINY_MODEL,
            "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=6", "train.eval_batch_size=2",
            "train.log_every=1", "train.tensorboard=false", "train.device=cpu", "optim.lr=1.0"]
    return load_config(None, [*base, *overrides])


def invoke(*args) -> Result:
    """Run the real CLI in-process; no command may ever print a traceback."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def train_run(config: Config, run_dir: Path, *, resume: bool = False, log: Callable[[str], None] | None = None,
              **options: Any) -> tuple[Trainer, TrainSummary]:
    """One quiet training run through the real Trainer: set up, fit, and close however it ends.

    `resume` continues the run in `run_dir` from its last.pt; `options` go to the Trainer (overwrite, ...).
    """
    saved = load_checkpoint(Path(run_dir) / "last.pt") if resume else None
    trainer = Trainer(config, run_dir, resume_from=saved, progress=False, log=log or (lambda message: None),
                      **options)
    try:
        trainer.setup()
        return trainer, trainer.fit()
    finally:
        trainer.close()
