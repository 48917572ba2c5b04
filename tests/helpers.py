"""Small builders shared by the tests: tiny configs and models."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from rnnlm.cli import cli
from rnnlm.config import Config, load_config

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
