"""Scalar logging to TensorBoard, with a do-nothing writer for tests and `train.tensorboard: false`."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Writer(Protocol):
    """What the trainer calls on a writer: TensorBoard's SummaryWriter has these methods, NullWriter too."""

    def add_scalar(self, tag: str, value: float, step: int) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class NullWriter:
    def add_scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_writer(run_dir: Path, enabled: bool, purge_step: int | None = None) -> Writer:
    """A TensorBoard SummaryWriter writing event files into `run_dir`, or a NullWriter.

    `purge_step`: TensorBoard hides the earlier files' events from this step on, as a resumed run logs
    the steps after its checkpoint again (those logged before a crash would show twice).
    """
    if not enabled:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter  # imported late: it takes a second to load

    return SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
