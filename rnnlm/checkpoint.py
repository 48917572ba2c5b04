"""Checkpoints: the only `torch.save` and `torch.load` in rnnlm, atomic writes, version checks.

A checkpoint is a plain dict of tensors and Python values, loadable with `weights_only=True`:
format marker and version, rnnlm version, config dict, tokenizer state, model state_dict and,
for resuming, the optimizer, schedule, data position, hidden state and RNG states.
"""

from __future__ import annotations

import errno
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch

from rnnlm import __version__
from rnnlm.config import Config
from rnnlm.data.tokenizers import Tokenizer, from_state
from rnnlm.errors import CheckpointError, ConfigError
from rnnlm.models import LanguageModel, build_model
from rnnlm.resume import saved_config
from rnnlm.warmstart import saved_start_states

FORMAT = "rnnlm-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically: a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "rnnlm_version": __version__, **payload}
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(payload, cast(BinaryIO, sink))  # torch only calls write() and flush()
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None  # torch's zip writer reports a failed write as "unexpected pos"
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint was written there"
        if exc.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left on device while writing {path}; {kept}") from None
        raise CheckpointError(f"could not write checkpoint {path}: {exc.strerror or exc}; {kept}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


class _Sink:
    """The file torch.save writes to, remembering the OSError that torch's writer turns into a RuntimeError."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint; every way it can be unusable becomes one CheckpointError."""
    path = Path(path)
    if path.is_dir():
        hint = " (did you mean " + str(path / "best.pt") + "?)" if (path / "best.pt").exists() else ""
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it did not finish")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # torch 2.13: "unsupported GLOBAL"; older: "Unsupported global"
            raise CheckpointError(
                f"{path} is not an rnnlm checkpoint: it holds Python objects rnnlm does not load "
                f"(rnnlm never unpickles arbitrary code)"
            ) from None
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint: it is truncated, damaged, or not a checkpoint file"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {(exc.strerror or str(exc)).lower()}") from None
    except Exception:  # torch.load fails on foreign bytes in many ways: zip, pickle, key and value errors
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint: it is truncated, damaged, or not a checkpoint file"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not an rnnlm checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer rnnlm ({payload.get('rnnlm_version')}, checkpoint "
            f"format {version}); this rnnlm {__version__} reads format {FORMAT_VERSION} and older: "
            f"upgrade rnnlm"
        )
    return payload


@dataclass
class Loaded:
    """What `load_model` gives: not the checkpoint's tensors, which would stay in memory beside the model's."""

    model: LanguageModel
    tokenizer: Tokenizer
    config: Config


def load_model(path: str | Path, device: torch.device | str = "cpu", impl: str | None = None) -> Loaded:
    """A ready model (eval mode, on `device`), its tokenizer and config, from the checkpoint alone.

    `impl` ("fused" or "reference") runs the same weights through the other recurrent stack.
    """
    payload = load_checkpoint(path)
    config = _saved_config(payload, path)
    if impl is not None and impl != config.model.impl:
        config = config.replace({"model.impl": impl})  # a ConfigError (exit 2) if the cell needs the other
    tokenizer = from_state(payload.get("tokenizer"))
    model = build_model(tokenizer.vocab_size, config.model)
    try:
        model.load_state_dict(payload.get("averaged_model") or payload["model"])  # NT-ASGD: the average
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: the saved weights do not fit the saved configuration ({_first_line(exc)})"
        ) from None
    try:
        model.start_states = saved_start_states(payload, model)  # None before issue 18: fresh starts at zero
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    model.to(device).eval()
    return Loaded(model, tokenizer, config)


def load_tokenizer(path: str | Path) -> tuple[Tokenizer, Config]:
    """The checkpoint's tokenizer and configuration, without building its model."""
    payload = load_checkpoint(path)
    return from_state(payload.get("tokenizer")), _saved_config(payload, path)


_RESUME_PARTS = ("model", "optimizer", "schedule", "batches", "trainer", "averager")


def identity(path: str | Path) -> tuple[str | None, int | None] | None:
    """(run id, step) of a checkpoint, read without loading its tensors; None if it is missing or unreadable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, damaged or foreign: it identifies nothing
        return None
    if not isinstance(payload, dict):
        return None
    trainer = payload.get("trainer")
    return payload.get("run_id"), trainer.get("step") if isinstance(trainer, dict) else None


def resume_payload(path: str | Path) -> tuple[dict[str, Any], Config]:
    """A checkpoint to resume from, and its config: one CheckpointError for every missing or damaged part
    that can be seen without building the run (what only the built run can check, `Trainer` checks)."""
    payload = load_checkpoint(path)
    config = _saved_config(payload, path)
    try:
        from_state(payload.get("tokenizer"))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    for key in _RESUME_PARTS:
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(
                f"{path} cannot be resumed: its {key!r} part is {'missing' if key not in payload else 'damaged'}"
            )
    trainer = payload["trainer"]
    for name, least in (("step", 0), ("epoch", 1)):
        if type(trainer.get(name)) is not int or trainer[name] < least:
            raise CheckpointError(f"{path} cannot be resumed: its trainer {name} is {trainer.get(name)!r}")
    if not isinstance(trainer.get("best_val"), (float, type(None))) or not isinstance(trainer.get("history"), list):
        raise CheckpointError(f"{path} cannot be resumed: its trainer state is damaged")
    ranks = payload.get("ranks", [payload])  # each rank's hidden state and generators (one rank: the payload's)
    if (
        not isinstance(ranks, list)
        or not ranks
        or not all(
            isinstance(r, dict) and isinstance(r.get("hidden"), (tuple, list)) and isinstance(r.get("rng"), dict)
            for r in ranks
        )
    ):
        raise CheckpointError(f"{path} cannot be resumed: its hidden state or random generators are missing or damaged")
    return payload, config


def _saved_config(payload: dict[str, Any], path: str | Path) -> Config:
    try:
        return saved_config(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds a configuration this rnnlm cannot use: {exc}") from None
    except (KeyError, AttributeError, TypeError):
        raise CheckpointError(f"{path} lacks its configuration") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
