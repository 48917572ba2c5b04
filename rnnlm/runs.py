"""Run folders: what `rnnlm train` runs (a new run or a resumed one), where its files go, who may write
them (one trainer at a time, by the OS's file lock), which run they belong to, and on what data."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from rnnlm.checkpoint import identity, resume_payload
from rnnlm.config import Config, load_config
from rnnlm.errors import CheckpointError, RunInUse, UsageError, storage_error
from rnnlm.resume import requested_changes, resume_config

if TYPE_CHECKING:
    from rnnlm.data.corpus import Split

fcntl: ModuleType | None  # declared so that the type checker sees both outcomes of the import
try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then not guarded against a second trainer
    fcntl = None

CHECKPOINTS = ("best.pt", "last.pt")
ID_FILE = "run_id"
RUN_FILES = ("best.pt", "last.pt", "config.yaml", ID_FILE)
LOCK_FILE = ".lock"
ASIDE = ".replaced"  # the run an --overwrite replaces, whole, kept until the new run's first last.pt
MOVING = ".replacing"  # that run while it moves aside (the folder holds only its other files)
RESTORING = ".restoring"  # that run while it moves back (the new run's files are gone already)
_PARTIAL = re.compile(r"^\.(.+\.pt|config\.yaml)\.\d+\.tmp$")  # save_checkpoint's and dump_yaml's temporary files


def plan_run(
    config_path: str | None, overrides: list[str], run_dir: str | None, resume: str | None, overwrite: bool
) -> tuple[Config, Path, dict[str, Any] | None]:
    """Decide what `rnnlm train` runs: the config, the run folder, and the checkpoint to resume from.

    `resume` is a run folder, or "auto" to resume `run_dir` when it holds a run and start it otherwise.
    A resumed run takes its config from its checkpoint; the file and overrides may only change
    the keys rnnlm/resume.py lists (how long, where, how often to validate).
    """
    if resume and resume != "auto":
        if run_dir and Path(run_dir) != Path(resume):
            raise UsageError(f"--resume {resume} and --run-dir {run_dir} name different folders")
        run_dir = resume
    folder = Path(run_dir) if run_dir else Path("runs") / (Path(config_path).stem if config_path else "run")
    checkpoint = resumable_checkpoint(folder)
    if resume == "auto" and checkpoint is None:
        resume = None
    if not resume:
        return load_config(config_path, overrides), folder, None
    if overwrite:
        raise UsageError("--resume and --overwrite cannot be used together")
    if checkpoint is None:
        _nothing_to_resume(folder)
    saved, config = resume_payload(checkpoint)
    return resume_config(config, requested_changes(config_path, overrides)), folder, saved


def resumable_checkpoint(folder: Path) -> Path | None:
    """The last.pt a resume of `folder` continues: its own, or that of the run an --overwrite stopped before
    its first checkpoint had set aside (the trainer puts that run back once it holds the folder's lock)."""
    for holder in (folder, *(folder / name for name in (ASIDE, MOVING, RESTORING))):
        if (holder / "last.pt").is_file():
            return holder / "last.pt"
    return None


def _nothing_to_resume(folder: Path) -> NoReturn:
    if not any((folder / name).exists() for name in CHECKPOINTS):  # --resume never starts a run: it has no config
        raise UsageError(
            f"nothing to resume in {folder}: it holds no checkpoint yet (a start stopped before its first "
            f"save); start it afresh with rnnlm train --run-dir {folder} ..."
        )
    raise UsageError(f"cannot resume: {folder / 'last.pt'} does not exist")


class RunFolder:
    """One trainer's hold on a run folder: the lock, the preparation, and the run an --overwrite replaces.

    The lock is `flock` on `.lock`: the kernel releases it when its holder exits in any way (kill -9
    included), so a stale lock cannot exist; the file only names the last holder for the message.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.locked = False
        self._fd: int | None = None
        self._replacing = False  # this trainer set a run aside and has not yet committed or rolled back

    def lock(self) -> None:
        """Take the folder (creating it) or raise RunInUse naming the process that holds it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(exc, self.path, doing="accessing the run folder") from None
        self._fd = fd
        if fcntl is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            self.release()
            raise RunInUse(
                f"run folder {self.path} is in use by process {holder or '(unknown)'}: another rnnlm "
                f"train holds it; wait for it to end or stop it, or choose another --run-dir"
            ) from None
        except OSError:  # a file system without locks (some network mounts): run unguarded, as before
            return
        self.locked = True
        try:  # the pid only names the holder in another trainer's message: a full disk must not stop this one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self._fd is None:
            return
        if self.locked and fcntl is not None:  # locked implies fcntl
            os.ftruncate(self._fd, 0)  # no stale pid: an empty lock file means nobody holds the folder
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd, self.locked = None, False

    def prepare(self, *, resume: bool, overwrite: bool, modify: bool = True) -> list[str]:
        """Refuse to mix two runs in one folder unless asked to resume or overwrite; returns lines to log.

        `modify` False only checks (the other ranks of a distributed run; rank 0 holds the lock and makes
        the changes). A folder without a checkpoint holds no run to protect: it starts afresh. A run that
        --overwrite replaces is moved aside, until `commit` (deleted) or `rollback` (put back).
        """
        if resume:  # rank 0 has put back a run set aside by now; the other ranks may still see it aside
            if resumable_checkpoint(self.path) is None:
                _nothing_to_resume(self.path)
            return []
        checkpoints = [name for name in CHECKPOINTS if (self.path / name).exists()]
        if checkpoints and not overwrite:
            if "last.pt" not in checkpoints:
                raise UsageError(
                    f"run folder {self.path} holds best.pt but no last.pt to resume from: pass "
                    f"--overwrite to replace it, or choose another --run-dir"
                )
            raise UsageError(
                f"run folder {self.path} already holds a run ({', '.join(checkpoints)}): pass --resume "
                f"{self.path} to continue it, --overwrite to replace it, or choose another --run-dir"
            )
        leftovers = self._run_files() if modify else []
        if checkpoints and leftovers:
            self._replacing = True
            (self.path / MOVING).mkdir()
            for path in leftovers:
                os.replace(path, self.path / MOVING / path.name)
            os.replace(self.path / MOVING, self.path / ASIDE)  # the old run is aside, whole
            return []
        for path in leftovers:
            path.unlink()
        return [
            f"run folder {self.path} holds no checkpoint yet (a start stopped before its first save): starting "
            f"it afresh"
        ] * bool(leftovers)

    def tidy(self) -> list[str]:
        """Once locked: finish a stopped --overwrite and remove partial checkpoints; returns lines to log."""
        return self._recover() + self._remove_partial_checkpoints()

    def commit(self) -> None:
        """The new run has saved its first last.pt: the run it replaces goes for good."""
        if self._replacing:
            shutil.rmtree(self.path / ASIDE, ignore_errors=True)  # what stays is removed at the next start
            self._replacing = False

    def rollback(self) -> None:
        """The new run stopped before its first last.pt: put back the run it was to replace."""
        if self._replacing:
            self._recover()
            self._replacing = False

    def _run_files(self) -> list[Path]:
        """The files of the run in the folder, TensorBoard events included."""
        return [self.path / name for name in RUN_FILES if (self.path / name).exists()] + sorted(
            self.path.glob("events.out.tfevents.*")
        )

    def _recover(self) -> list[str]:
        """Finish what a stopped --overwrite left: if its new run saved a last.pt, drop the old run, else put
        it back. Each step of moving a run aside or back is named by its folder, so that one killed at any
        moment is finished right: nothing of the old run is ever deleted before the new run has a last.pt."""
        for name in (MOVING, RESTORING):
            if (self.path / name).is_dir():
                self._move_back(self.path / name)
                return [f"put back the run in {self.path} that an interrupted --overwrite was moving"]
        aside = self.path / ASIDE
        if not aside.is_dir():
            return []
        if (self.path / "last.pt").exists():
            shutil.rmtree(aside)
            return []
        for path in self._run_files():  # what the new run's start-up wrote
            path.unlink()
        os.replace(aside, self.path / RESTORING)
        self._move_back(self.path / RESTORING)
        return [
            f"put back the run in {self.path} that an --overwrite stopped before its first checkpoint had set aside"
        ]

    def _move_back(self, holder: Path) -> None:
        for path in holder.iterdir():
            os.replace(path, self.path / path.name)
        holder.rmdir()

    def _remove_partial_checkpoints(self) -> list[str]:
        """Temporary files of checkpoint writes that never finished. All of them go, whatever their pid: the
        lock proves that no other trainer writes here, and a pid may have been reused (or be another
        machine's on a shared disk). Without a lock, none are touched."""
        if not self.locked:
            return []
        partial = [path for path in self.path.iterdir() if _PARTIAL.match(path.name) and path.is_file()]
        for path in partial:
            path.unlink()
        if not partial:
            return []
        return [f"removed {len(partial)} partial checkpoint files left by stopped writers in {self.path}"]

    def read_id(self) -> str | None:
        try:
            text = (self.path / ID_FILE).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if re.fullmatch(r"[0-9a-f]{32}", text) else None

    def write_id(self, run_id: str) -> None:
        if self.read_id() != run_id:
            (self.path / ID_FILE).write_text(run_id + "\n", encoding="ascii")

    def run_id(self, saved: Mapping[str, Any] | None) -> str:
        """A new run's new id, or the resumed run's: refused when last.pt belongs to another run, by the
        folder's `run_id` file or, without it, by best.pt's id. Called with the lock held, after `tidy`.

        A run saved before runs had ids resumes, and keeps the folder's id or gets a new one."""
        if saved is None:
            return uuid.uuid4().hex
        self._check_unchanged(saved)
        theirs = saved.get("run_id")
        mine, source = self.read_id(), self.path / ID_FILE
        if mine is None:  # the file is gone (deleted by hand, or a run from before ids): best.pt still knows
            best = identity(self.path / "best.pt")
            mine, source = best[0] if best else None, self.path / "best.pt"
        if mine and theirs and mine != theirs:
            raise CheckpointError(
                f"{self.path / 'last.pt'} belongs to another run (run id {theirs[:12]}, while "
                f"{source} says {mine[:12]}): it was copied here from another run "
                f"folder; resume that folder instead, or put this run's own last.pt back"
            )
        return theirs or mine or uuid.uuid4().hex

    def _check_unchanged(self, saved: Mapping[str, Any]) -> None:
        """The last.pt read before the lock was taken is still the folder's: another trainer may have saved
        one in between (it ended just as this one started)."""
        trainer = saved.get("trainer")
        read = (saved.get("run_id"), trainer.get("step") if isinstance(trainer, Mapping) else None)
        if identity(self.path / "last.pt") != read:
            raise RunInUse(
                f"{self.path / 'last.pt'} changed while this trainer started (another trainer saved it "
                f"meanwhile): run the command again to resume from the new one"
            )


def split_fingerprint(split: Split) -> dict[str, Any]:
    """The token count and the sha256 of a split's ids (the cache's checksum, verified when it loaded them):
    the data a run trains on, whatever file held it."""
    return {"tokens": int(len(split.ids)), "sha256": split.sha256}


def changed_splits(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """The splits whose ids differ from those recorded in a checkpoint (none for one without a record)."""
    if not isinstance(saved, Mapping):
        return []
    names = [*current, *(name for name in saved if name not in current)]
    return [name for name in names if saved.get(name) != current.get(name)]


def describe_changes(changed: list[str], saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """'the train split differs (4,000 tokens then, 4,100 now)', for a log line or an error."""

    def counts(name: str) -> str:
        then, now = (saved.get(name) or {}).get("tokens"), (current.get(name) or {}).get("tokens")
        if then is None or now is None:
            return "added" if then is None else "removed"
        return f"{now:,} tokens, other ones" if then == now else f"{then:,} tokens then, {now:,} now"

    if len(changed) == 1:
        return f"the {changed[0]} split differs ({counts(changed[0])})"
    return (
        f"the {' and '.join(changed)} splits differ (" + "; ".join(f"{name}: {counts(name)}" for name in changed) + ")"
    )
