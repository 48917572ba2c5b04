"""The exceptions rnnlm raises for problems a user can fix, each with the exit code the CLI uses."""

from __future__ import annotations

import errno
from pathlib import Path


class RnnlmError(Exception):
    """A known failure: the CLI prints `Error: <message>` and exits with `exit_code`."""

    exit_code = 1
    prefix = "Error"


class UsageError(RnnlmError):
    """The command line asked for something that cannot be done as asked (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration has unknown keys or invalid values (exit 2)."""


class DataError(RnnlmError):
    """A corpus is missing, empty, too short, not text, or could not be downloaded (exit 1)."""


class CheckpointError(RnnlmError):
    """A checkpoint is missing, truncated, not rnnlm's, or incompatible (exit 1)."""


class TrainingError(RnnlmError):
    """Training cannot go on, for example after a non-finite loss (exit 1)."""


class Interrupted(RnnlmError):
    """A run stopped on SIGINT or SIGTERM after saving its state (exit 130 or 143)."""

    prefix = "Interrupted"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunInUse(RnnlmError):
    """Another trainer holds the run folder (exit 1)."""


class StorageError(RnnlmError):
    """The operating system refused a file: no space left, permission denied, read-only (exit 1)."""


def storage_error(exc: OSError, path: str | Path | None = None, doing: str = "writing", hint: str = "") -> StorageError:
    """One line for an OSError about `path` (default: the error's own file name)."""
    where = path if path is not None else exc.filename
    if exc.errno == errno.ENOSPC:
        what = "no space left on device"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        what = "permission denied"
    else:
        what = (exc.strerror or str(exc)).lower()
    place = f" {where}" if where is not None else " a file"
    return StorageError(f"{what} while {doing}{place}" + (f"; {hint}" if hint else ""))
