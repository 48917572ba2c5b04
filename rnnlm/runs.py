"""Run folders: what `rnnlm train` runs (a new run or a resumed one) and where its files go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlm.checkpoint import load_checkpoint
from rnnlm.config import Config, load_config, requested_changes, resume_config, saved_config
from rnnlm.errors import UsageError

RUN_FILES = ("best.pt", "last.pt", "config.yaml")


def plan_run(config_path: str | None, overrides: list[str], run_dir: str | None, resume: str | None,
             overwrite: bool) -> tuple[Config, Path, dict[str, Any] | None]:
    """Decide what `rnnlm train` runs: the config, the run folder, and the checkpoint to resume from.

    `resume` is a run folder, or "auto" to resume `run_dir` when it holds a run and start it otherwise.
    A resumed run takes its config from its checkpoint; the file and overrides may only change
    RESUMABLE_KEYS (how long, where, how often to validate).
    """
    if resume and resume != "auto":
        if run_dir and Path(run_dir) != Path(resume):
            raise UsageError(f"--resume {resume} and --run-dir {run_dir} name different folders")
        run_dir = resume
    folder = Path(run_dir) if run_dir else Path("runs") / (Path(config_path).stem if config_path else "run")
    if resume == "auto" and not (folder / "last.pt").is_file():
        resume = None
    if not resume:
        return load_config(config_path, overrides), folder, None
    if overwrite:
        raise UsageError("--resume and --overwrite cannot be used together")
    if not (folder / "last.pt").is_file():
        raise UsageError(f"cannot resume: {folder / 'last.pt'} does not exist")
    saved = load_checkpoint(folder / "last.pt")
    config = resume_config(saved_config(saved["config"]), requested_changes(config_path, overrides))
    return config, folder, saved


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, modify: bool = True) -> None:
    """Refuse to mix two runs in one folder unless asked to resume or overwrite.

    `modify` False only checks (the other ranks of a distributed run; rank 0 makes the changes).
    """
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise UsageError(f"cannot resume: {run_dir / 'last.pt'} does not exist")
        return
    if existing and not overwrite:
        raise UsageError(f"run folder {run_dir} already holds a run ({', '.join(existing)}): pass --resume "
                         f"{run_dir} to continue it, --overwrite to replace it, or choose another --run-dir")
    if not modify:
        return
    if existing:
        for path in [run_dir / name for name in existing] + list(run_dir.glob("events.out.tfevents.*")):
            path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
