"""Synthetic tasks with a known answer: text from a stated random process, and its exact entropy rate.

`write_task` writes `train.txt`, `valid.txt`, `test.txt` and `floor.json` into a folder. The texts are meant
for a character model (`tokenizer.kind: char`): one token is one character, the line end included, which is
what `rnnlm eval` divides by. Every line starts afresh (nothing in it depends on the lines before), and eval
predicts a split's first token after a line end, so the best possible predictor of a file is the process's
own, restarted at each line; `floor.json`'s `bits_per_token` is its entropy rate, derived below, never
estimated:

  rate = E[bits of a line] / E[characters of a line]   (lines are i.i.d.: the renewal-reward theorem)

- copy, lag N, K symbols (1 <= K <= N), alphabet of A = 8 letters: a line is K uniform letters, N - K dots,
  the same K letters again, a line end. Each letter comes back exactly N characters later. Only the first
  K letters are random (log2 A bits each); the dots, the copy and the line end follow from the position in
  the line. rate = K log2 A / (N + K + 1). K = N is the classic copy task (memory of N letters); the
  default K = 1 asks for one letter held over N steps.
- agreement, lag N: a subject noun, N distractor nouns, a verb, a line end. Nouns are 4 letters, lowercase
  singular, uppercase plural, each of the 8 uniform (3 bits); the verb is `v` after a singular subject and
  `V` after a plural one, whatever the distractors (attractors of either number, Linzen et al. 2016).
  rate = 3 (N + 1) / (N + 3).
- brackets, lag N (the greatest depth): a walk on the depth d, one character a step. At d = 0: `(` or the
  line end, 1/2 each. At 0 < d < N: `(`, `)` or `x`, 1/3 each. At d = N: `)` or `x`, 1/2 each. The depth
  is a function of the line so far, so the best predictor knows it, and a step at depth d carries H(d) bits.
  See `bracket_rate` for the exact expectation.

`baseline_bits_per_token` is the rate of the best predictor that knows the position in the line but forgets
what the task asks to remember (the K letters; the subject's number): the copy adds K log2 A bits a line,
agreement one bit. brackets has none (forgetting the depth leaves no single natural predictor): null.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from rnnlm.errors import DataError, UsageError

TASKS = ("copy", "brackets", "agreement")
SPLITS = ("train", "valid", "test")
MAX_LAG = 10_000  # a line stays far below the corpus reader's 4M-character line limit
LETTERS = "abcdefgh"  # copy: A = 8
FILLER = "."
NOUNS = "abcdABCD"  # agreement: lowercase singular, uppercase plural
VERBS = {False: "v", True: "V"}  # plural subject -> verb
FLOOR_FILE = "floor.json"
GENERATOR = "rnnlm synth"


@dataclass(frozen=True)
class Task:
    """One task's settings and what follows from them: the exact rate and how to draw a line."""

    name: str
    lag: int
    symbols: int  # copy: letters to recall per line; 0 for the other tasks
    description: str
    bits_per_token: float
    baseline_bits_per_token: float | None
    tokens_per_line: float  # expected characters of a line, its line end included
    draw_line: Callable[[random.Random], str]


def make_task(name: str, lag: int, symbols: int | None = None) -> Task:
    """The task `name` at `lag`; UsageError (one line) for an unknown task, a lag out of range, or `symbols`
    where it does not apply."""
    if name not in TASKS:
        raise UsageError(f"unknown synthetic task {name!r}: choose {', '.join(TASKS)}")
    if not 1 <= lag <= MAX_LAG:
        raise UsageError(f"--lag must be between 1 and {MAX_LAG:,} (got {lag})")
    if name != "copy" and symbols is not None:
        raise UsageError(f"--symbols applies to the copy task only, not {name}")
    if name == "copy":
        return _copy_task(lag, 1 if symbols is None else symbols)
    if name == "agreement":
        return _agreement_task(lag)
    return _brackets_task(lag)


def _copy_task(lag: int, symbols: int) -> Task:
    if not 1 <= symbols <= lag:
        raise UsageError(f"--symbols must be between 1 and --lag ({lag}) (got {symbols})")
    length = lag + symbols + 1
    bits = symbols * math.log2(len(LETTERS))

    def draw(rng: random.Random) -> str:
        message = "".join(rng.choices(LETTERS, k=symbols))
        return message + FILLER * (lag - symbols) + message + "\n"

    return Task(
        "copy",
        lag,
        symbols,
        f"{symbols} random letter(s) of {LETTERS}, {lag - symbols} dots, the same letter(s) again: "
        f"each letter comes back {lag} characters later",
        bits / length,
        2 * bits / length,
        float(length),
        draw,
    )


def _agreement_task(lag: int) -> Task:
    length = lag + 3  # subject, lag distractors, verb, line end
    bits = (lag + 1) * math.log2(len(NOUNS))

    def draw(rng: random.Random) -> str:
        nouns = "".join(rng.choices(NOUNS, k=lag + 1))
        return nouns + VERBS[nouns[0].isupper()] + "\n"

    return Task(
        "agreement",
        lag,
        0,
        f"a subject noun (lowercase singular, uppercase plural), {lag} distractor nouns, a verb agreeing "
        f"with the subject (v singular, V plural)",
        bits / length,
        (bits + 1) / length,
        float(length),
        draw,
    )


def bracket_probabilities(depth: int, lag: int) -> dict[str, Fraction]:
    """The brackets walk's next-character probabilities at `depth` (0 <= depth <= lag)."""
    half, third = Fraction(1, 2), Fraction(1, 3)
    if depth == 0:
        return {"(": half, "\n": half}
    if depth == lag:
        return {")": half, "x": half}
    return {"(": third, ")": third, "x": third}


def bracket_visits(lag: int) -> list[Fraction]:
    """Expected number of characters a line emits at each depth 0..lag, exactly.

    Each visit to depth 0 ends the line with probability p0 = 1/2, so depth 0 is visited 1/p0 times. A line
    starts and ends at depth 0, so it crosses each edge d -> d+1 upwards as often as downwards, and each visit
    to d goes up with probability up(d): v(d) up(d) = v(d+1) down(d+1), hence v(d+1) = v(d) up(d) / down(d+1).
    """
    visits = [1 / bracket_probabilities(0, lag)["\n"]]
    for depth in range(lag):
        up = bracket_probabilities(depth, lag)["("]
        down = bracket_probabilities(depth + 1, lag)[")"]
        visits.append(visits[-1] * up / down)
    return visits


def bracket_rate(lag: int) -> tuple[float, float]:
    """(bits per token, expected characters per line) of the brackets walk.

    E[bits of a line] = sum_d v(d) H(d) and E[characters] = sum_d v(d), with v from `bracket_visits` and H(d)
    the entropy of the step at depth d. For these probabilities v = 2, 3, ..., 3, 2 (N >= 2), so a line has
    3N + 1 characters on average and 4 + 3 (N - 1) log2 3 bits; N = 1 gives 4 characters and 4 bits.
    """
    visits = bracket_visits(lag)
    bits = sum(float(v) * _entropy(bracket_probabilities(d, lag)) for d, v in enumerate(visits))
    characters = sum(visits)
    return bits / float(characters), float(characters)


def _entropy(probabilities: dict[str, Fraction]) -> float:
    return -sum(float(p) * math.log2(p) for p in probabilities.values() if p > 0)


def _brackets_task(lag: int) -> Task:
    rate, length = bracket_rate(lag)

    # depths 0, 1..lag-1 and lag have three distinct tables: draw from float copies of them
    tables = {d: bracket_probabilities(d, lag) for d in {0, min(1, lag), lag}}
    choices = {d: (list(t), [float(p) for p in t.values()]) for d, t in tables.items()}

    def draw(rng: random.Random) -> str:
        depth, line = 0, []
        while True:
            chars, weights = choices[depth if depth in (0, lag) else 1]
            char = rng.choices(chars, weights=weights)[0]
            line.append(char)
            if char == "\n":
                return "".join(line)
            depth += {"(": 1, ")": -1}.get(char, 0)

    return Task(
        "brackets",
        lag,
        0,
        f"a random walk on bracket depth, at most {lag} deep, with x between brackets",
        rate,
        None,
        length,
        draw,
    )


def generate(task: Task, seed: int, tokens: int) -> dict[str, str]:
    """The three splits' texts: whole lines until the train split holds at least `tokens` characters, and
    valid and test a tenth of that each (at least one line). Each split draws from its own generator, seeded
    by the task, lag, seed and split, so the same arguments give the same files."""
    targets = {"train": tokens, "valid": max(tokens // 10, 1), "test": max(tokens // 10, 1)}
    texts = {}
    for split, target in targets.items():
        rng = random.Random(f"rnnlm-synth:{task.name}:{task.lag}:{task.symbols}:{seed}:{split}")
        lines, size = [], 0
        while size < target:
            lines.append(task.draw_line(rng))
            size += len(lines[-1])
        texts[split] = "".join(lines)
    return texts


def floor_record(task: Task, seed: int, texts: dict[str, str]) -> dict[str, Any]:
    """What `floor.json` holds: the rate and the settings that made the files."""
    return {
        "generator": GENERATOR,
        "task": task.name,
        "lag": task.lag,
        **({"symbols": task.symbols} if task.name == "copy" else {}),
        "seed": seed,
        "description": task.description,
        "tokenizer": "char",
        "bits_per_token": task.bits_per_token,
        "baseline_bits_per_token": task.baseline_bits_per_token,
        "tokens_per_line": task.tokens_per_line,
        "splits": {name: {"lines": text.count("\n"), "tokens": len(text)} for name, text in texts.items()},
    }


def write_task(task: Task, out: Path, *, seed: int, tokens: int, overwrite: bool = False) -> dict[str, Any]:
    """Write the splits and floor.json into `out`; refuse (UsageError) a folder that holds anything unless
    `overwrite`, before writing a byte. Each file is written whole under a temporary name, then renamed."""
    if tokens < 1:
        raise UsageError(f"--tokens must be at least 1 (got {tokens})")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty: pass --overwrite to replace its files")
    texts = generate(task, seed, tokens)
    record = floor_record(task, seed, texts)
    out.mkdir(parents=True, exist_ok=True)
    files = {f"{name}.txt": text for name, text in texts.items()}
    files[FLOOR_FILE] = json.dumps(record, indent=2) + "\n"
    for name, text in files.items():
        partial = out / f".{name}.{os.getpid()}.part"
        try:
            partial.write_text(text, encoding="utf-8", newline="\n")
            os.replace(partial, out / name)
        finally:
            partial.unlink(missing_ok=True)
    return record


def find_floor(folder: Path, tokenizer_kind: str) -> float | None:
    """The `bits_per_token` of the floor.json `rnnlm synth` wrote in `folder`, for a model with tokens of
    `tokenizer_kind`; None when there is none, it is not rnnlm's (not even JSON: eval never fails on some other
    program's file) or its tokens are not the model's. rnnlm's with a damaged number: DataError."""
    path = folder / FLOOR_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("generator") != GENERATOR:
        return None
    bits = record.get("bits_per_token")
    if not isinstance(bits, (int, float)) or isinstance(bits, bool) or not math.isfinite(bits) or bits < 0:
        raise DataError(f"{path} has no valid bits_per_token: write it again with rnnlm synth")
    return float(bits) if record.get("tokenizer") == tokenizer_kind else None
