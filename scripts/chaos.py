"""Fault injection: kill a real `rnnlm train` at random moments, then load every checkpoint and resume.

Each round starts `rnnlm train --resume auto` on one run folder (a fresh `--overwrite` run once the
previous one has finished), waits a random time or until a checkpoint is being written, and sends
SIGKILL, SIGINT or SIGTERM. After each kill it loads every checkpoint in the folder, checks the exit
code (130 for SIGINT, 143 for SIGTERM, -9 for SIGKILL) and lists leftover temporary files. Now and then
it starts a second trainer on the same folder while one runs: that one must be refused. At the end a
last run trains to completion from wherever the kills left it, and must exit 0 with nothing left over.

    python scripts/chaos.py --kills 100
    python scripts/chaos.py --kills 20 --text my.txt --keep /tmp/chaos

The default text is generated (no corpus needed). Prints one line per round and a summary; exits 1
if anything failed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

EXPECTED_EXIT = {signal.SIGKILL: -signal.SIGKILL, signal.SIGINT: 130, signal.SIGTERM: 143}
LEFTOVER_SUFFIXES = (".tmp", ".part")
SET_ASIDE = (".replaced", ".replacing", ".restoring")


@dataclass
class Tally:
    kills: dict[str, int] = field(default_factory=lambda: {"SIGKILL": 0, "SIGINT": 0, "SIGTERM": 0})
    during_write: int = 0
    during_startup: int = 0  # kills before the trainer was set up (imports, corpus, model, folder)
    without_last: int = 0  # kills that left the folder with no last.pt to resume
    finished_before_kill: int = 0
    before_python: int = 0  # the signal reached the interpreter before rnnlm's code ran (nothing changed yet)
    after_completion: int = 0  # the signal reached a run that had finished and saved (exit 0, or the signal's own)
    loads: int = 0
    resumes: int = 0
    overwrites: int = 0
    refused_second: int = 0
    failures: list[str] = field(default_factory=list)


def make_text(path: Path, seed: int, size: int = 60_000) -> None:
    """Play-like lines from a small vocabulary: enough structure for a tiny model to learn."""
    rng = random.Random(seed)
    names = ["ALONSO", "MIRANDA", "PROSPERO", "ARIEL"]
    words = "the a of to my and thou art be not that with what shall our sea isle storm".split()
    lines = []
    while sum(map(len, lines)) < size:
        lines.append(f"{rng.choice(names)}:\n")
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + ".\n\n")
    path.write_text("".join(lines), encoding="utf-8")


def train_command(run_dir: Path, text: Path, cache: Path, fresh: bool) -> list[str]:
    """A 2x96 char LSTM that validates and writes checkpoints every 15 steps (each about 1.6 MB)."""
    start = ["--overwrite"] if fresh else ["--resume", "auto"]
    return [sys.executable, "-m", "rnnlm", "train", "--run-dir", str(run_dir), *start, "--no-progress",
            f"data.corpus={text}", f"data.cache_dir={cache}", "data.valid_fraction=0.05", "data.test_fraction=0.05",
            "model.num_layers=2", "model.hidden_size=96", "model.embed_size=32", "train.batch_size=16",
            "train.bptt=32", "train.epochs=0", "train.max_steps=600", "train.eval_every=15",
            "train.eval_batch_size=8", "train.log_every=5", "train.num_threads=1", "optim.name=adam",
            "optim.lr=0.003", "optim.schedule=cosine"]


def leftovers(*folders: Path) -> list[Path]:
    """Temporary files, and the folders in which an --overwrite sets the old run aside."""
    return [p for folder in folders if folder.exists() for p in folder.rglob("*")
            if (p.is_file() and p.name.endswith(LEFTOVER_SUFFIXES)) or (p.is_dir() and p.name in SET_ASIDE)]


def temporary_checkpoints(run_dir: Path) -> set[str]:
    try:
        return {name for name in os.listdir(run_dir) if name.endswith(".tmp") and ".pt." in name}
    except FileNotFoundError:
        return set()


def writing(run_dir: Path, left_before: set[str]) -> bool:
    """Whether a checkpoint write is in progress: a temporary file exists that a killed writer had not left."""
    return bool(temporary_checkpoints(run_dir) - left_before)


def load_all(run_dir: Path, tally: Tally, label: str) -> None:
    """Every checkpoint in the folder must load with its model, tokenizer and config."""
    from rnnlm.checkpoint import load_model
    from rnnlm.errors import RnnlmError

    for name in ("best.pt", "last.pt"):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            load_model(path)
            tally.loads += 1
        except RnnlmError as exc:
            tally.failures.append(f"{label}: {name} does not load: {exc}")


def wait_and_kill(proc: subprocess.Popen, run_dir: Path, sig: signal.Signals, rng: random.Random,
                  started: float, left_before: set[str]) -> tuple[bool, bool]:
    """Kill `proc` at a random moment (a third of the time, as soon as a checkpoint write is seen).

    Returns (killed, during_write)."""
    aim_at_write = rng.random() < 1 / 3
    deadline = started + rng.uniform(0.3, 12.0)
    give_up = started + 60.0
    while proc.poll() is None:
        now = time.monotonic()
        if aim_at_write and writing(run_dir, left_before):
            proc.send_signal(sig)
            return True, True
        if not aim_at_write and now >= deadline:
            during = writing(run_dir, left_before)
            proc.send_signal(sig)
            return True, during
        if now >= give_up:
            proc.send_signal(sig)
            return True, writing(run_dir, left_before)
        time.sleep(0.0005 if aim_at_write else 0.01)
    return False, False


def second_trainer(first: subprocess.Popen, command: list[str], env: dict[str, str], tally: Tally,
                   label: str) -> None:
    """A second trainer on a folder in use must be refused with one line, not run. (If the first one ended
    meanwhile, the second may rightly have taken the folder: nothing is concluded.)"""
    other = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    message = other.stderr.strip().splitlines()[-1] if other.stderr.strip() else ""
    if first.poll() is not None:
        return
    if other.returncode in (0, 130, 143) or "Traceback" in other.stderr or not message.startswith("Error:"):
        tally.failures.append(f"{label}: a second trainer on the same folder was not refused "
                              f"(exit {other.returncode}: {message})")
    else:
        tally.refused_second += 1


def one_round(k: int, paths: dict[str, Path], env: dict[str, str], rng: random.Random,
              tally: Tally, fresh: bool) -> bool:
    """Start, (maybe) try a second trainer, kill, check. Returns whether the run finished on its own."""
    run_dir, cache = paths["run"], paths["cache"]
    sig = rng.choice(list(EXPECTED_EXIT))
    command = train_command(run_dir, paths["text"], cache, fresh)
    log = paths["logs"] / f"round{k:03d}.log"
    had_checkpoint = (run_dir / "last.pt").exists() or any((run_dir / name / "last.pt").exists() for name in SET_ASIDE)
    left_before = temporary_checkpoints(run_dir)  # a killed writer's, removed once the trainer takes the folder
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        if k % 10 == 5:  # while this one runs (it has taken the lock within its first seconds)
            time.sleep(4.0)
            if proc.poll() is None:
                second_trainer(proc, train_command(run_dir, paths["text"], cache, False), env, tally, f"round {k}")
        killed, during = wait_and_kill(proc, run_dir, sig, rng, started, left_before)
        code = proc.wait(timeout=300)
    output = log.read_text(errors="replace")
    label = f"round {k} ({sig.name}{', during a checkpoint write' if during else ''})"
    if "Traceback" in output:
        tally.failures.append(f"{label}: traceback in the output ({log})")
    if not killed:
        if code != 0:
            tally.failures.append(f"{label}: exited {code} on its own before the kill ({log})")
        tally.finished_before_kill += 1
    elif code in (0, -sig) and "\nDone: " in output:  # the run had ended, saved, and was exiting
        tally.after_completion += 1
    elif sig != signal.SIGKILL and code == -sig and not output:  # Python was still starting: rnnlm's handlers
        # were not installed yet (SIGKILL needs none: its -9 is an ordinary kill)
        tally.before_python += 1
    else:
        tally.kills[sig.name] += 1
        tally.during_write += during
        tally.during_startup += "| model " not in output  # the line a trainer prints once it is set up
        tally.without_last += not (run_dir / "last.pt").exists()
        if code != EXPECTED_EXIT[sig]:
            tally.failures.append(f"{label}: exit {code}, expected {EXPECTED_EXIT[sig]} ({log})")
    resumed = "resuming at step" in output
    tally.resumes += resumed  # rounds that got as far as restoring a checkpoint
    started_training = "| model " in output  # the line a trainer prints once it is set up
    if not fresh and had_checkpoint and started_training and not resumed:
        tally.failures.append(f"{label}: --resume auto on a run with a last.pt did not resume it ({log})")
    tally.overwrites += fresh
    load_all(run_dir, tally, label)
    print(f"{label}: exit {code} after {time.monotonic() - started:.1f}s, "
          f"{len(leftovers(run_dir, cache))} temporary file(s) on disk", flush=True)
    return (not killed and code == 0) or "\nDone: " in output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100, help="rounds, each ending in one signal")
    parser.add_argument("--seed", type=int, default=0, help="chooses signals and moments")
    parser.add_argument("--text", type=Path, help="training text [default: a generated one]")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it [default: a temporary one]")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="rnnlm-chaos-"))
    paths = {"run": root / "run", "cache": root / "cache", "logs": root / "logs", "text": args.text or root / "text.txt"}
    paths["logs"].mkdir(parents=True, exist_ok=True)
    if not args.text:
        make_text(paths["text"], args.seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tally, fresh, begun = Tally(), True, time.monotonic()
    for k in range(1, args.kills + 1):
        fresh = one_round(k, paths, env, rng, tally, fresh)
    final = subprocess.run(train_command(paths["run"], paths["text"], paths["cache"], fresh), env=env,
                           capture_output=True, text=True, timeout=1200)
    if final.returncode != 0:
        tally.failures.append(f"the final run to completion exited {final.returncode}: "
                              f"{final.stderr.strip().splitlines()[-1:]}")
    load_all(paths["run"], tally, "after the final run")
    left = leftovers(paths["run"], paths["cache"])
    tally.failures += [f"leftover temporary file after the final run: {p}" for p in left]
    print(f"\n{sum(tally.kills.values())} kills ({', '.join(f'{n} {s}' for s, n in tally.kills.items())}; "
          f"{tally.during_write} during a checkpoint write, {tally.during_startup} before training began; "
          f"{tally.without_last} left the folder without a last.pt); {tally.finished_before_kill} rounds finished "
          f"before their kill, and in "
          f"{tally.after_completion} the signal reached a run that had finished and saved, in {tally.before_python} "
          f"an interpreter still starting")
    print(f"{tally.loads} checkpoint loads, {tally.resumes} resumes, {tally.overwrites} fresh --overwrite starts, "
          f"{tally.refused_second} second trainers refused, final run exit {final.returncode}, "
          f"{len(left)} leftover temporary files, {time.monotonic() - begun:.0f} s")
    print(f"failures: {len(tally.failures)}")
    for failure in tally.failures:
        print(f"  {failure}")
    if not args.keep:
        print(f"(work folder {root})")
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
