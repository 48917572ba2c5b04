"""Several processes, one model: the process group torchrun describes, and the few collectives rnnlm uses.

Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) each process joins one group:
NCCL on GPUs, gloo on CPUs, with a bounded timeout so that a failed or hung rank turns into an
error on the others instead of a wait without end. Without torchrun, everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rnnlm.errors import TrainingError, UsageError
from rnnlm.runtime import resolve_device


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over every rank (float64)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def max(self, value: int, device: torch.device) -> int:
        return int(self.highest(value, device))  # exact: small integers, such as a signal number

    def highest(self, value: float, device: torch.device) -> float:
        """The largest `value` of every rank."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def highest_each(self, values: list[float], device: torch.device) -> list[float]:
        """The largest of every rank's values, element by element, in one collective."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def join(device_name: str, timeout_seconds: int) -> tuple[Group, torch.device]:
    """Join torchrun's process group if there is one; the device this process trains on."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Group(), resolve_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UsageError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                f"lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device_name in ("auto", "cpu"):
        device = torch.device("cpu")
    else:
        raise UsageError(
            f"under torchrun, train.device must be auto, cuda or cpu (got {device_name!r}): each "
            f"process takes the GPU of its local rank"
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_seconds))
    return Group(rank, world_size), device


def leave(together: bool = False) -> None:
    """Leave the process group. `together`: every rank got here after a normal end, so they first meet at a
    barrier and tear gloo down at the same moment (a rank that exits while another still holds the group
    open can abort the other at exit); never after a failure, when a dead rank would leave it waiting."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if together:
        with contextlib.suppress(RuntimeError):  # a rank failed after all: leave anyway
            dist.barrier()
    dist.destroy_process_group()


def failure(group: Group, exc: BaseException, timeout_seconds: int) -> TrainingError:
    """The error a rank reports when a collective fails: usually another rank died or hung."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainingError(
        f"rank {group.rank} of {group.world_size}: distributed training stopped: {first}. Another "
        f"process has probably failed or hung (collectives time out after train.dist_timeout = "
        f"{timeout_seconds} s); see its log, then resume with --resume"
    )
