"""Where and how a run executes: device choice, seeding, thread count and RNG state capture."""

from __future__ import annotations

import contextlib
import functools
import random
import re
import signal
from collections.abc import Callable
from typing import Any

import torch

from rnnlm.errors import UsageError

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(name: str) -> torch.device:
    """Turn `auto | cpu | cuda | cuda:N | mps` into a torch.device that exists on this machine."""
    if not _DEVICE_PATTERN.match(name):
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} was asked for, but this machine has no usable CUDA GPU")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if name == "mps" and not _mps_available():
        raise UsageError("device 'mps' was asked for, but MPS is not available on this machine")
    return torch.device(name)


PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: torch.autocast for bf16 / fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def check_precision(precision: str, device: torch.device, impl: str, cell: str = "lstm") -> None:
    """Refuse a precision the device's kernels cannot run, before any work is done."""
    if precision == "fp16" and device.type == "cpu" and impl == "fused":
        raise UsageError(
            "train.precision=fp16 cannot run torch's fused recurrent kernels on a CPU (oneDNN has no "
            "fp16 LSTM): use train.precision=bf16, or model.impl=reference"
        )
    if precision == "bf16" and device.type == "cpu" and impl == "fused" and cell == "lstm" and not cpu_has_bf16_lstm():
        raise UsageError(
            "train.precision=bf16 cannot run torch's fused LSTM on this CPU (oneDNN builds its bf16 LSTM "
            "only for CPUs with AVX-512; bf16 would not be faster here anyway): use "
            "train.precision=fp32, or model.impl=reference"
        )
    if precision != "fp32" and device.type == "mps":
        raise UsageError(f"train.precision={precision} is not supported on mps: use fp32")


@functools.cache
def cpu_has_bf16_lstm() -> bool:
    """Whether oneDNN runs torch's fused LSTM under bf16 autocast on this CPU (it refuses without AVX-512)."""
    with torch.random.fork_rng(devices=[]):  # a run's draws stay those its seed gives
        lstm = torch.nn.LSTM(4, 4)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 4))
    except RuntimeError:
        return False
    return True


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def configure_threads(num_threads: int) -> None:
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, as plain Python and tensor values."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(as_tuple(state["python"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        saved = state["cuda"]
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in saved])


def as_tuple(value: Any) -> Any:
    """Lists back into tuples, recursively: RNG states come back from a checkpoint as lists."""
    return tuple(as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class StopSignals:
    """The first SIGINT or SIGTERM asks the loop to stop after the current step; a second exits at once."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.caught: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.caught is not None:
            raise KeyboardInterrupt
        self.caught = signum
        self.log(
            f"\n{signal.Signals(signum).name}: finishing this step and saving (press Ctrl-C again to quit "
            f"at once; the last checkpoint on disk stays intact)"
        )
