"""Run folders under attack: --overwrite that fails half-way, two trainers on one folder, a checkpoint from
another run, changed data, a start killed before its first checkpoint, damaged checkpoints, leftovers."""

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, invoke
from rnnlm.checkpoint import load_checkpoint, save_checkpoint
from rnnlm.errors import StorageError, UsageError
from rnnlm.runs import RunFolder, changed_splits, describe_changes, plan_run
from rnnlm.train import Trainer

TINY = [*TINY_MODEL, "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=6",
        "train.tensorboard=false", "data.valid_fraction=0.1", "data.test_fraction=0.1"]
KEPT = ("best.pt", "last.pt", "config.yaml")


def train(corpus, run_dir, *extra):
    return invoke("train", "--run-dir", run_dir, f"data.corpus={corpus}", *TINY, *extra)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run folder (the lock file aside: it names its last holder), with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.fixture
def run_a(tiny_corpus, tmp_path):
    result = train(tiny_corpus, tmp_path / "a", "train.seed=1")
    assert result.exit_code == 0, result.output
    return tmp_path / "a"


# 1. --overwrite replaces the old run only once the new one has saved


def test_overwrite_with_a_missing_corpus_keeps_the_old_run(run_a, tmp_path):
    before = snapshot(run_a)
    result = train(tmp_path / "typo.txt", run_a, "--overwrite")
    assert result.exit_code == 1 and "does not exist" in result.output
    assert snapshot(run_a) == before and set(KEPT) <= set(before)


def test_overwrite_failing_after_the_corpus_loads_puts_the_old_run_back(run_a, tiny_corpus):
    before = snapshot(run_a)
    result = train(tiny_corpus, run_a, "--overwrite", "train.precision=fp16")  # refused once the corpus is read
    assert result.exit_code == 2 and "fp16" in result.output
    assert snapshot(run_a) == before


def test_an_exception_before_the_first_save_puts_the_old_run_back(run_a, tiny_corpus, monkeypatch):
    (run_a / "events.out.tfevents.1.old").write_bytes(b"old events")
    before = snapshot(run_a)

    def fail(self, name):
        raise RuntimeError("injected before the first checkpoint")
    monkeypatch.setattr(Trainer, "save", fail)
    with pytest.raises(RuntimeError, match="injected"):
        invoke_trainer(tiny_corpus, run_a, overwrite=True, tensorboard=True)
    assert snapshot(run_a) == before


def test_ctrl_c_during_start_up_of_an_overwrite_puts_the_old_run_back_and_says_so_truly(run_a, tiny_corpus,
                                                                                          monkeypatch):
    before = snapshot(run_a)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("rnnlm.train.build_model", interrupt)
    result = train(tiny_corpus, run_a, "--overwrite", "train.seed=9")
    assert result.exit_code == 130 and "checkpoints on disk are intact" in result.output
    assert snapshot(run_a) == before


def test_sigterm_during_start_up_of_an_overwrite_puts_the_old_run_back_and_exits_143(run_a, tiny_corpus):
    """A real SIGTERM to the real program while it builds its model (a job scheduler's stop)."""
    before = snapshot(run_a)
    program = ("import os, signal, sys\n"
               "import rnnlm.cli, rnnlm.train\n"
               "build = rnnlm.train.build_model\n"
               "def build_and_be_stopped(*args, **kwargs):\n"
               "    os.kill(os.getpid(), signal.SIGTERM)\n"
               "    return build(*args, **kwargs)\n"
               "rnnlm.train.build_model = build_and_be_stopped\n"
               "rnnlm.cli.main()\n")
    result = subprocess.run([sys.executable, "-c", program, "train", "--run-dir", str(run_a), "--overwrite",
                             f"data.corpus={tiny_corpus}", *TINY, "train.seed=9"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 143, result.stderr
    assert "checkpoints on disk are intact" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(run_a) == before


def test_a_successful_overwrite_removes_the_old_run_and_leaves_nothing_aside(run_a, tiny_corpus):
    (run_a / "events.out.tfevents.1.old").write_bytes(b"old events")
    old_id = (run_a / "run_id").read_text()
    result = train(tiny_corpus, run_a, "--overwrite", "train.seed=5")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run_a / "last.pt")["config"]["train"]["seed"] == 5
    assert load_checkpoint(run_a / "best.pt")["config"]["train"]["seed"] == 5
    assert sorted(p.name for p in run_a.iterdir()) == [".lock", "best.pt", "config.yaml", "last.pt", "run_id"]
    assert (run_a / "run_id").read_text() != old_id


def test_an_overwrite_killed_before_its_first_checkpoint_is_undone_at_the_next_start(run_a, tiny_corpus):
    before = snapshot(run_a)
    folder = RunFolder(run_a)
    folder.lock()
    folder.prepare(resume=False, overwrite=True)  # the old run moves aside
    (run_a / "config.yaml").write_text("")  # what a start killed at once leaves
    folder.release()  # as the kernel does for a killed process: nothing is put back
    assert not (run_a / "last.pt").exists()

    result = train(tiny_corpus, run_a)  # a plain start: the old run comes back, and is protected
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert f"put back the run in {run_a}" in result.output
    assert snapshot(run_a) == before


@pytest.mark.parametrize("resume", ["auto", "folder"])
def test_a_resume_after_an_overwrite_killed_before_its_first_checkpoint_continues_the_old_run(run_a, tiny_corpus,
                                                                                              resume):
    """What a job scheduler does after a kill: run the same `--resume auto` command again."""
    before = snapshot(run_a)
    folder = RunFolder(run_a)
    folder.lock()
    folder.prepare(resume=False, overwrite=True)  # the old run moves aside
    (run_a / "config.yaml").write_text("")  # what a start killed at once leaves
    (run_a / "run_id").write_text("f" * 32 + "\n")  # the new run's id, written before its first save
    folder.release()  # as the kernel does for a killed process: nothing is put back
    args = ["--resume", "auto", "--run-dir", run_a] if resume == "auto" else ["--resume", run_a]
    result = invoke("train", *args, "train.max_steps=9")
    assert result.exit_code == 0, result.output
    assert f"put back the run in {run_a}" in result.output and "resuming at step 6" in result.output
    assert load_checkpoint(run_a / "last.pt")["trainer"]["step"] == 9
    assert (run_a / "run_id").read_bytes() == before["run_id"] and not (run_a / ".replaced").exists()


def test_ctrl_c_while_the_old_run_moves_aside_puts_it_back(run_a, tiny_corpus, monkeypatch):
    before = snapshot(run_a)
    real_replace, calls = os.replace, []

    def interrupted_after_one_file(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(source, target)
    monkeypatch.setattr("rnnlm.runs.os.replace", interrupted_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        invoke_trainer(tiny_corpus, run_a, overwrite=True)
    assert len(calls) > 2  # it was half-way, and the rest of the calls moved the one file back
    assert snapshot(run_a) == before


def test_an_overwrite_killed_while_moving_the_old_run_aside_is_undone_at_the_next_start(run_a, tiny_corpus):
    before = snapshot(run_a)
    (run_a / ".replacing").mkdir()
    (run_a / "best.pt").rename(run_a / ".replacing" / "best.pt")  # killed after its first move
    result = train(tiny_corpus, run_a)
    assert result.exit_code == 2 and "already holds a run" in result.output
    assert snapshot(run_a) == before


def invoke_trainer(corpus, run_dir, *, overwrite=False, tensorboard=False):
    from helpers import tiny_config, train_run
    config = tiny_config(corpus, f"train.tensorboard={str(tensorboard).lower()}")
    return train_run(config, run_dir, overwrite=overwrite)[1]


# 2. one trainer per run folder


HOLDER = """
import sys
from pathlib import Path
from rnnlm.runs import RunFolder
RunFolder(Path(sys.argv[1])).lock()
print("locked", flush=True)
sys.stdin.read()
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes the run folder's lock and keeps it until its stdin closes or it dies."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_trainer_on_a_held_folder_is_refused_naming_the_holder(run_a, tiny_corpus, tmp_path):
    before = snapshot(run_a)
    holder = hold_lock(run_a)
    try:
        resumed = invoke("train", "--resume", run_a, "train.max_steps=9")
        assert resumed.exit_code == 1
        assert resumed.output.startswith("Error: ") and resumed.output.count("\n") == 1
        assert f"run folder {run_a} is in use by process {holder.pid}" in resumed.output
        overwritten = train(tiny_corpus, run_a, "--overwrite")
        assert overwritten.exit_code == 1 and f"process {holder.pid}" in overwritten.output
        assert snapshot(run_a) == before
        fresh = hold_lock(tmp_path / "new")
        try:
            assert train(tiny_corpus, tmp_path / "new").exit_code == 1
        finally:
            fresh.stdin.close()
            fresh.wait()
    finally:
        holder.stdin.close()
        holder.wait()
    assert invoke("train", "--resume", run_a, "train.max_steps=9").exit_code == 0  # free once the holder ends


def test_a_lock_left_by_a_killed_process_does_not_block_the_next_start(run_a):
    holder = hold_lock(run_a)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run_a / ".lock").read_text().strip() == str(holder.pid)  # its pid stays, its lock does not
    result = invoke("train", "--resume", run_a, "train.max_steps=9")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run_a / "last.pt")["trainer"]["step"] == 9


def test_a_trainer_holds_the_lock_until_it_closes(tiny_corpus, tmp_path):
    from helpers import tiny_config
    trainer = Trainer(tiny_config(tiny_corpus), tmp_path / "run", progress=False, log=lambda m: None)
    try:
        trainer.setup()
        probe = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path / "run")], capture_output=True,
                               text=True, input="")
        assert probe.returncode == 1 and f"in use by process {os.getpid()}" in probe.stderr
    finally:
        trainer.close()
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released, and no stale pid left behind


# 3. a run's identity


@pytest.mark.parametrize("id_file", ["kept", "deleted"])
def test_a_checkpoint_from_another_run_is_refused(run_a, tiny_corpus, tmp_path, id_file):
    assert train(tiny_corpus, tmp_path / "b", "train.seed=2", "train.max_steps=3").exit_code == 0
    (run_a / "last.pt").write_bytes((tmp_path / "b" / "last.pt").read_bytes())
    if id_file == "deleted":  # then run a's best.pt still says whose folder this is
        (run_a / "run_id").unlink()
    before = snapshot(run_a)
    result = invoke("train", "--resume", run_a, "train.max_steps=12")
    assert result.exit_code == 1 and "belongs to another run" in result.output, result.output
    assert ("best.pt says" in result.output) == (id_file == "deleted")
    assert snapshot(run_a) == before


def test_a_last_pt_saved_by_another_trainer_while_this_one_started_is_not_resumed(run_a, tiny_corpus, tmp_path):
    from rnnlm.errors import RunInUse
    from rnnlm.runs import plan_run
    config, folder, saved = plan_run(None, ["train.max_steps=12"], str(run_a), str(run_a), False)
    shutil.copytree(run_a, tmp_path / "later", ignore=shutil.ignore_patterns(".lock"))
    assert invoke("train", "--resume", tmp_path / "later", "train.max_steps=9").exit_code == 0
    (run_a / "last.pt").write_bytes((tmp_path / "later" / "last.pt").read_bytes())  # the same run, saved further
    trainer = Trainer(config, folder, resume_from=saved, progress=False, log=lambda m: None)
    try:
        with pytest.raises(RunInUse, match="changed while this trainer started"):
            trainer.setup()
    finally:
        trainer.close()
    assert load_checkpoint(run_a / "last.pt")["trainer"]["step"] == 9


def test_a_run_saved_before_run_ids_resumes_and_gets_one(run_a):
    for name in ("best.pt", "last.pt"):
        payload = load_checkpoint(run_a / name)
        del payload["run_id"], payload["data_fingerprint"]
        save_checkpoint(payload, run_a / name)
    (run_a / "run_id").unlink()
    result = invoke("train", "--resume", run_a, "train.max_steps=9")
    assert result.exit_code == 0, result.output
    run_id = (run_a / "run_id").read_text().strip()
    assert len(run_id) == 32 and load_checkpoint(run_a / "last.pt")["run_id"] == run_id
    assert "train" in load_checkpoint(run_a / "last.pt")["data_fingerprint"]


# 6. resuming on other data


@pytest.fixture
def folder_corpus(tiny_corpus, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    text = tiny_corpus.read_text()
    (folder / "train.txt").write_text(text)
    (folder / "valid.txt").write_text(text[:400])
    (folder / "test.txt").write_text(text[400:800])
    return folder


def test_resume_on_a_changed_training_split_is_refused_unless_allowed(folder_corpus, tmp_path):
    run_dir = tmp_path / "run"
    assert train(folder_corpus, run_dir).exit_code == 0
    with open(folder_corpus / "train.txt", "a") as f:
        f.write("All:\nSpeak, speak.\n")
    before = snapshot(run_dir)
    refused = invoke("train", "--resume", run_dir, "train.max_steps=9")
    assert refused.exit_code == 2, refused.output
    assert "the train split differs" in refused.output and "--allow-data-change" in refused.output
    assert "valid" not in refused.output.split("differs")[0]
    assert snapshot(run_dir) == before

    allowed = invoke("train", "--resume", run_dir, "--allow-data-change", "train.max_steps=9")
    assert allowed.exit_code == 0, allowed.output
    assert "warning: resuming on changed data: the train split differs" in allowed.output
    again = invoke("train", "--resume", run_dir, "train.max_steps=12")  # the new data is now the run's
    assert again.exit_code == 0 and "warning" not in again.output


def test_characters_outside_the_vocabulary_count_as_a_change(folder_corpus, tmp_path):
    run_dir = tmp_path / "run"
    assert train(folder_corpus, run_dir).exit_code == 0
    text = (folder_corpus / "valid.txt").read_text()
    (folder_corpus / "valid.txt").write_text(text.replace("S", "\u00a7"))  # read as <unk> by the saved tokenizer
    refused = invoke("train", "--resume", run_dir, "train.max_steps=9")
    assert refused.exit_code == 2 and "the valid split differs" in refused.output, refused.output


# 10. a folder whose run never saved a checkpoint


@pytest.mark.parametrize("resume", [[], ["--resume", "auto"]])
def test_a_folder_without_a_checkpoint_starts_afresh(tiny_corpus, tmp_path, resume):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("")  # a start killed while writing it
    (run_dir / "events.out.tfevents.1.dead").write_bytes(b"events of a dead start")
    result = train(tiny_corpus, run_dir, *resume)
    assert result.exit_code == 0, result.output
    assert "holds no checkpoint yet" in result.output and "starting it afresh" in result.output
    assert not (run_dir / "events.out.tfevents.1.dead").exists()
    assert load_checkpoint(run_dir / "last.pt")["trainer"]["step"] == 6


def test_resuming_a_folder_without_a_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("")
    result = invoke("train", "--resume", run_dir)
    assert result.exit_code == 2
    assert "nothing to resume" in result.output and f"rnnlm train --run-dir {run_dir}" in result.output


def test_a_folder_with_best_but_no_last_is_protected_and_says_how_to_replace_it(run_a, tiny_corpus):
    (run_a / "last.pt").unlink()
    result = train(tiny_corpus, run_a)
    assert result.exit_code == 2 and "no last.pt" in result.output and "--overwrite" in result.output


# 11. damaged checkpoints


def wrong_size(payload):
    name = next(iter(payload["model"]))
    payload["model"][name] = torch.zeros(3, 3)


def delete(*path):
    def damage(payload):
        for key in path[:-1]:
            payload = payload[key]
        del payload[path[-1]]
    return damage


def replace(key, value):
    def damage(payload):
        payload[key] = value
    return damage


def garbage_step(payload):
    payload["trainer"]["step"] = "many"


def garbage_hidden(payload):
    payload["hidden"] = payload["ranks"][0]["hidden"] = (torch.zeros(2, 2),)


def garbage_optimizer(payload):
    payload["optimizer"]["state"] = {0: {"momentum_buffer": torch.zeros(5)}}
    payload["optimizer"]["param_groups"][0]["params"] = [0]


@pytest.mark.parametrize("damage", [
    wrong_size, delete("config"), delete("optimizer"), delete("schedule"), delete("batches"), delete("trainer"),
    delete("trainer", "epoch"), delete("batches", "position"), replace("model", "weights"),
    replace("tokenizer", {"kind": "char"}), replace("config", {"model": {"cell": "transformer"}}),
    garbage_step, garbage_hidden, garbage_optimizer,
], ids=["wrong-size", "no-config", "no-optimizer", "no-schedule", "no-batches", "no-trainer", "no-epoch",
        "no-position", "model-garbage", "tokenizer-garbage", "config-garbage", "step-garbage", "hidden-garbage",
        "optimizer-garbage"])
def test_resuming_a_damaged_checkpoint_is_one_error_line_and_changes_nothing(run_a, damage):
    payload = load_checkpoint(run_a / "last.pt")
    damage(payload)
    save_checkpoint(payload, run_a / "last.pt")
    before = snapshot(run_a)
    result = invoke("train", "--resume", run_a, "train.max_steps=9")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert str(run_a / "last.pt") in result.output
    assert snapshot(run_a) == before


# 13. leftovers of killed writers


def test_partial_checkpoints_of_dead_writers_are_removed_at_start(run_a):
    leftovers = [run_a / ".last.pt.999999.tmp", run_a / ".best.pt.12.tmp", run_a / ".config.yaml.12.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a checkpoint")
    unrelated = run_a / ".notes.txt.12.tmp"
    unrelated.write_text("not ours")
    result = invoke("train", "--resume", run_a, "train.max_steps=9")
    assert result.exit_code == 0, result.output
    assert "removed 3 partial checkpoint files" in result.output
    assert not any(path.exists() for path in leftovers) and unrelated.exists()


# 14. plan_run, the folder's lock and id, and the words for changed data, one function at a time


def test_contradictory_resume_flags_are_usage_errors(run_a, tmp_path):
    with pytest.raises(UsageError, match=r"--resume .* and --run-dir .* name different folders"):
        plan_run(None, [], str(tmp_path / "other"), str(run_a), overwrite=False)
    with pytest.raises(UsageError, match=r"--resume and --overwrite cannot be used together"):
        plan_run(None, [], None, str(run_a), overwrite=True)
    config, folder, saved = plan_run(None, ["train.max_steps=9"], str(run_a), str(run_a), overwrite=False)
    assert folder == run_a and saved["trainer"]["step"] == 6 and config.train.max_steps == 9


def test_a_run_without_run_dir_goes_under_runs_named_after_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "char-lstm.yaml").write_text("train:\n  seed: 5\n")
    config, folder, saved = plan_run(str(tmp_path / "char-lstm.yaml"), [], None, "auto", overwrite=False)
    assert (folder, saved, config.train.seed) == (Path("runs") / "char-lstm", None, 5)  # auto: nothing to resume
    assert plan_run(None, [], None, None, overwrite=False)[1] == Path("runs") / "run"


def test_resuming_a_folder_with_best_but_no_last_names_the_missing_file(run_a):
    (run_a / "last.pt").unlink()
    with pytest.raises(UsageError, match=r"cannot resume: .*last\.pt does not exist"):
        plan_run(None, [], None, str(run_a), overwrite=False)
    with pytest.raises(UsageError, match=r"cannot resume: .*last\.pt does not exist"):
        RunFolder(run_a).prepare(resume=True, overwrite=False)


def test_a_run_folder_that_cannot_be_created_is_one_storage_error(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(StorageError, match=r"while accessing the run folder .*file/run"):
        RunFolder(tmp_path / "file" / "run").lock()


def test_a_file_system_without_locks_runs_unguarded(tmp_path, monkeypatch):
    import rnnlm.runs

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rnnlm.runs.fcntl, "flock", no_locks)
    folder = RunFolder(tmp_path / "run")
    folder.lock()
    assert not folder.locked and (tmp_path / "run" / ".lock").exists()
    (tmp_path / "run" / ".last.pt.12.tmp").write_bytes(b"another writer's, perhaps")
    assert folder.tidy() == [] and (tmp_path / "run" / ".last.pt.12.tmp").exists()  # unlocked: touches nothing
    folder.release()


def test_a_set_aside_run_goes_once_the_new_run_has_its_last_pt(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".replaced").mkdir(parents=True)
    (run_dir / ".replaced" / "last.pt").write_bytes(b"the old run")
    (run_dir / "last.pt").write_bytes(b"the new run")
    folder = RunFolder(run_dir)
    folder.lock()
    try:
        assert folder.tidy() == []
    finally:
        folder.release()
    assert not (run_dir / ".replaced").exists() and (run_dir / "last.pt").read_bytes() == b"the new run"


def test_only_a_well_formed_run_id_is_read_and_an_unchanged_one_is_not_rewritten(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_id() is None
    (tmp_path / "run_id").write_text("not an id\n")
    assert folder.read_id() is None
    run_id = "0123456789abcdef0123456789abcdef"
    folder.write_id(run_id)
    assert folder.read_id() == run_id
    os.utime(tmp_path / "run_id", (0, 0))
    folder.write_id(run_id)
    assert (tmp_path / "run_id").stat().st_mtime == 0
    assert len(folder.run_id(None)) == 32 and folder.run_id(None) != folder.run_id(None)  # a new run's is new


def test_changed_splits_are_described_with_their_token_counts():
    then = {"train": {"tokens": 4000, "sha256": "a"}, "valid": {"tokens": 400, "sha256": "b"},
            "test": {"tokens": 300, "sha256": "c"}}
    assert changed_splits(None, then) == [] and changed_splits(then, then) == []
    now = {**then, "train": {"tokens": 4100, "sha256": "x"}}
    assert describe_changes(changed_splits(then, now), then, now) == \
        "the train split differs (4,000 tokens then, 4,100 now)"
    now = {"train": {"tokens": 4000, "sha256": "x"}, "valid": then["valid"], "extra": {"tokens": 5, "sha256": "d"}}
    changed = changed_splits(then, now)
    assert changed == ["train", "extra", "test"]
    assert describe_changes(changed, then, now) == ("the train and extra and test splits differ (train: 4,000 tokens, "
                                                    "other ones; extra: added; test: removed)")
