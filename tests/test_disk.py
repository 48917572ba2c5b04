"""A full disk and a refused permission end in one line, with nothing lost: real ENOSPC and EACCES.

A full disk is a tiny tmpfs filled to the brim when the tests may mount one (root, as in CI), and in
any case the temp file a write goes to made a link to /dev/full, whose writes fail with ENOSPC.
Permissions are checked as user nobody when running as root (root ignores mode bits).
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import invoke, tiny_config
from rnnlm.checkpoint import load_checkpoint
from rnnlm.data.corpus import load_corpus
from rnnlm.data.registry import writer_tag
from rnnlm.errors import CheckpointError, StorageError
from rnnlm.train import Trainer
from test_safety import TINY_CLI
from test_train import run


def can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    folder = tempfile.mkdtemp()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder],
                                 capture_output=True).returncode == 0
        if mounted:
            subprocess.run(["umount", folder], check=True)
        return mounted
    finally:
        os.rmdir(folder)


KINDS = ["dev-full", "tmpfs"] if can_mount() else ["dev-full"]


class Disk:
    """A folder whose filesystem can be made full."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder = kind, folder
        folder.mkdir()
        if kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True)

    def fill(self, *temp_files: Path) -> None:
        """No room left: the tmpfs filled with a filler file, or each of `temp_files` (the temp names the
        next writes use) made a link to /dev/full."""
        if self.kind == "tmpfs":
            with open(self.folder / "filler", "wb", buffering=0) as filler:
                try:
                    while filler.write(b"\0" * 512):
                        pass
                except OSError:
                    pass
        else:
            for path in temp_files:
                path.symlink_to("/dev/full")

    def free(self) -> None:
        (self.folder / "filler").unlink(missing_ok=True)
        for path in self.folder.rglob("*"):
            if path.is_symlink():
                path.unlink()

    def close(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["umount", "-l", str(self.folder)], check=True)


@pytest.fixture(params=KINDS)
def disk(request, tmp_path):
    disk = Disk(request.param, tmp_path / "disk")
    yield disk
    disk.close()


def temp_names(folder: Path, *names: str, pattern: str = ".{}.{}.tmp") -> list[Path]:
    return [folder / pattern.format(name, os.getpid()) for name in names]


def test_a_checkpoint_write_on_a_full_disk_is_one_line_and_keeps_the_previous(tiny_corpus, disk):
    run_dir = disk.folder / "run"
    run(tiny_config(tiny_corpus), run_dir)
    before = {name: (run_dir / name).read_bytes() for name in ("best.pt", "last.pt")}
    trainer = Trainer(tiny_config(tiny_corpus, "train.max_steps=12", "train.eval_every=2"), run_dir,
                      resume_from=load_checkpoint(run_dir / "last.pt"),
                      progress=False, log=lambda m: None)
    try:
        trainer.setup()
        disk.fill(*temp_names(run_dir, "best.pt", "last.pt"))
        with pytest.raises(CheckpointError, match=r"^no space left on device while writing .*(best|last)\.pt; the "
                                                  r"previous checkpoint is intact$"):
            trainer.fit()
    finally:
        trainer.close()
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert not [path for path in run_dir.glob(".*.tmp") if not path.is_symlink()]  # the unused link may stay


def test_a_full_disk_at_start_keeps_config_yaml_and_resume_works_once_freed(tiny_corpus, disk):
    run_dir = disk.folder / "run"
    args = ["train", "--resume", "auto", "--run-dir", run_dir, f"data.corpus={tiny_corpus}", *TINY_CLI]
    assert invoke(*args, "train.max_steps=4").exit_code == 0
    before = (run_dir / "config.yaml").read_bytes()
    disk.fill(*temp_names(run_dir, "config.yaml"))
    result = invoke(*args, "train.max_steps=8")
    assert result.exit_code == 1, result.output
    assert f"Error: no space left on device while writing {run_dir / 'config.yaml'}\n" in result.output
    assert (run_dir / "config.yaml").read_bytes() == before and not list(run_dir.glob(".*.tmp"))
    disk.free()
    again = invoke(*args, "train.max_steps=8")
    assert again.exit_code == 0 and "Done: 8 steps" in again.output, again.output


def test_a_full_cache_folder_is_one_line(tiny_corpus, disk, monkeypatch):
    monkeypatch.setenv("RNNLM_CACHE", str(disk.folder / "cache"))
    config = tiny_config(tiny_corpus)
    load_corpus(config.data, config.tokenizer)  # the tokenizer is cached now; only the ids are written again
    entries = sorted((disk.folder / "cache" / "ids").glob("*.ids"))
    for entry in entries:
        entry.unlink()
        entry.with_suffix(".json").unlink()
    disk.fill(*[entry.with_name(f"{entry.name}.{writer_tag()}.part") for entry in entries])
    with pytest.raises(StorageError, match=r"^no space left on device while writing .*/ids/[0-9a-f]+\.ids; free "
                                           r"space there or point data.cache_dir \(or RNNLM_CACHE\) at a folder"):
        load_corpus(config.data, config.tokenizer)
    assert not [p for p in (disk.folder / "cache" / "ids").iterdir() if not p.is_symlink()]


AS_NOBODY = """
import click._textwrap, encodings.idna, encodings.utf_32, encodings.utf_32_le, os, sys
import rnnlm.checkpoint, rnnlm.cli, rnnlm.data.corpus, rnnlm.evaluate, rnnlm.runs, rnnlm.sample, rnnlm.train
import torch.utils.serialization
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # after the imports: nobody may not read /root's Python
sys.argv[0] = "rnnlm"
rnnlm.cli.main()
"""


def rnnlm_unprivileged(*args, cache: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that mode bits apply to: as nobody when running as root."""
    start = [sys.executable, "-c", AS_NOBODY] if os.geteuid() == 0 else [sys.executable, "-m", "rnnlm"]
    return subprocess.run([*start, *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RNNLM_CACHE": str(cache)})


@pytest.fixture
def public(tiny_corpus):
    """A folder anyone may read and write (pytest's tmp_path is root's alone), with the corpus in it."""
    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o777)
    shutil.copy(tiny_corpus, folder / "tiny.txt")
    (folder / "tiny.txt").chmod(0o644)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.parametrize("refused", ["corpus", "run folder's parent", "cache folder"])
def test_permission_denied_is_one_line_naming_the_path(public, refused):
    corpus, run_dir, cache = public / "tiny.txt", public / "run", public / "cache"
    if refused == "corpus":
        corpus.chmod(0)
        expected = f"Error: permission denied while reading {corpus}"
    elif refused == "run folder's parent":
        (public / "locked").mkdir(mode=0o555)
        run_dir = public / "locked" / "run"
        expected = f"Error: permission denied while accessing the run folder {run_dir}"
    else:
        cache.mkdir(mode=0o555)
        expected = f"Error: permission denied while writing {cache / 'tokenizers'}"
    result = rnnlm_unprivileged("train", "--run-dir", run_dir, f"data.corpus={corpus}", *TINY_CLI, cache=cache)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreadable_checkpoint_is_one_line(public):
    run(tiny_config(public / "tiny.txt"), public / "run")
    (public / "run" / "last.pt").chmod(0)
    result = rnnlm_unprivileged("train", "--resume", public / "run", cache=public / "cache")
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"Error: cannot read checkpoint {public / 'run' / 'last.pt'}: permission denied\n"
