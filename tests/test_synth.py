"""rnnlm synth: the files follow the stated process, and floor.json's rate is checked by means of its own.

Each floor is recomputed here without the library's formula: as the exact log-loss of the process's own
predictor on the files written (copy, agreement: every file scores exactly the rate), by running the brackets
walk forward in time (a different computation from the library's flow balance), and against the optimal
predictor's log-loss on a sample, within five standard errors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import TINY_MODEL, invoke

from rnnlm.synth import make_task, write_task

SPLITS = ("train", "valid", "test")


def written(tmp_path: Path, *args: object) -> tuple[dict[str, str], dict]:
    """Run `rnnlm synth ARGS --out tmp_path/data`; the split texts and floor.json."""
    out = tmp_path / "data"
    result = invoke("synth", *args, "--out", out)
    assert result.exit_code == 0, result.output
    texts = {name: (out / f"{name}.txt").read_text(encoding="utf-8") for name in SPLITS}
    return texts, json.loads((out / "floor.json").read_text(encoding="utf-8"))


def copy_line_bits(line: str, lag: int, symbols: int) -> float:
    """-log2 p of a copy line under the process: K letters of 8 at 1/8, everything after them forced."""
    assert len(line) == lag + symbols + 1 and line.endswith("\n")
    message = line[:symbols]
    assert set(message) <= set("abcdefgh") and line[lag : lag + symbols] == message
    assert line[symbols:lag] == "." * (lag - symbols)
    return symbols * 3.0


def agreement_line_bits(line: str, lag: int) -> float:
    """-log2 p of an agreement line: subject and distractors at 1/8 each, the verb forced by the subject."""
    assert len(line) == lag + 3 and line.endswith("\n")
    nouns, verb = line[: lag + 1], line[lag + 1]
    assert set(nouns) <= set("abcdABCD")
    assert verb == ("V" if nouns[0].isupper() else "v")
    return (lag + 1) * 3.0


def bracket_table(depth: int, lag: int) -> dict[str, float]:
    """The walk as the module docstring states it, written out again."""
    if depth == 0:
        return {"(": 0.5, "\n": 0.5}
    return {")": 0.5, "x": 0.5} if depth == lag else {"(": 1 / 3, ")": 1 / 3, "x": 1 / 3}


def bracket_line_bits(line: str, lag: int) -> float:
    """-log2 p of a brackets line under the walk, checking it never leaves 0..lag and ends at depth 0."""
    depth, bits = 0, 0.0
    for char in line:
        table = bracket_table(depth, lag)
        assert char in table, (line, depth)
        bits -= math.log2(table[char])
        depth += {"(": 1, ")": -1}.get(char, 0)
    assert line.endswith("\n") and depth == 0
    return bits


def lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


@pytest.mark.parametrize(("lag", "symbols"), [(1, 1), (5, 1), (5, 2), (7, 7)])
def test_every_copy_file_scores_exactly_the_floor_under_the_process(tmp_path: Path, lag: int, symbols: int) -> None:
    texts, floor = written(tmp_path, "copy", "--lag", lag, "--symbols", symbols, "--tokens", 3000)
    assert floor["bits_per_token"] == pytest.approx(symbols * 3 / (lag + symbols + 1), abs=1e-15)
    assert floor["baseline_bits_per_token"] == pytest.approx(2 * floor["bits_per_token"], abs=1e-15)
    for name, text in texts.items():
        bits = sum(copy_line_bits(line, lag, symbols) for line in lines(text))
        assert bits / len(text) == pytest.approx(floor["bits_per_token"], abs=1e-12), name
        assert floor["splits"][name] == {"lines": len(lines(text)), "tokens": len(text)}


@pytest.mark.parametrize("lag", [1, 4, 30])
def test_every_agreement_file_scores_exactly_the_floor_under_the_process(tmp_path: Path, lag: int) -> None:
    texts, floor = written(tmp_path, "agreement", "--lag", lag, "--tokens", 3000)
    verbs = {"v": 0, "V": 0}
    for name, text in texts.items():
        bits = sum(agreement_line_bits(line, lag) for line in lines(text))
        assert bits / len(text) == pytest.approx(floor["bits_per_token"], abs=1e-12), name
        for line in lines(text):
            verbs[line[-2]] += 1
    assert min(verbs.values()) > 0.4 * sum(verbs.values())  # both numbers, about evenly
    assert floor["baseline_bits_per_token"] - floor["bits_per_token"] == pytest.approx(1 / (lag + 3), abs=1e-12)


def bracket_rate_forward(lag: int, tolerance: float = 1e-13) -> tuple[float, float]:
    """(E[bits of a line], E[characters of a line]) by pushing the depth distribution forward one character at a
    time until the mass of lines still open is below `tolerance` (its share of the sums is bounded by it)."""
    alive, bits, characters = {0: 1.0}, 0.0, 0.0
    while sum(alive.values()) > tolerance:
        after: dict[int, float] = {}
        for depth, mass in alive.items():
            table = bracket_table(depth, lag)
            characters += mass
            bits += mass * -sum(p * math.log2(p) for p in table.values())
            for char, p in table.items():
                if char != "\n":
                    moved = depth + {"(": 1, ")": -1}.get(char, 0)
                    after[moved] = after.get(moved, 0.0) + mass * p
        alive = after
    return bits, characters


@pytest.mark.parametrize("lag", [1, 2, 3, 6])
def test_the_brackets_floor_is_the_walks_entropy_per_character(lag: int) -> None:
    bits, characters = bracket_rate_forward(lag)
    task = make_task("brackets", lag)
    assert task.bits_per_token == pytest.approx(bits / characters, rel=1e-9)
    assert task.tokens_per_line == pytest.approx(characters, rel=1e-9)
    # and the closed form the docstring gives
    assert characters == pytest.approx(3 * lag + 1 if lag > 1 else 4, rel=1e-9)


@pytest.mark.parametrize("lag", [1, 3, 8])
def test_the_optimal_predictor_scores_the_brackets_floor_on_a_sample(tmp_path: Path, lag: int) -> None:
    texts, floor = written(tmp_path, "brackets", "--lag", lag, "--tokens", 60_000, "--seed", 3)
    per_line = [(bracket_line_bits(line, lag), len(line)) for text in texts.values() for line in lines(text)]
    n = len(per_line)
    rate = sum(b for b, _ in per_line) / sum(c for _, c in per_line)
    mean_length = sum(c for _, c in per_line) / n
    # a ratio of sums over i.i.d. lines: its standard error by the delta method
    spread = sum((b - floor["bits_per_token"] * c) ** 2 for b, c in per_line) / (n - 1)
    error = math.sqrt(spread / n) / mean_length
    assert abs(rate - floor["bits_per_token"]) <= 5 * error + 1e-12  # lag 1: every character is one bit
    assert error < 0.03 * floor["bits_per_token"]  # the check has teeth: the sample pins the rate to a few %
    assert max(len(line) for text in texts.values() for line in lines(text)) > 2 * lag  # deep lines occur


def test_the_same_seed_writes_the_same_files(tmp_path: Path) -> None:
    first, _ = written(tmp_path / "a", "brackets", "--lag", 5, "--seed", 7, "--tokens", 2000)
    again, _ = written(tmp_path / "b", "brackets", "--lag", 5, "--seed", 7, "--tokens", 2000)
    other, _ = written(tmp_path / "c", "brackets", "--lag", 5, "--seed", 8, "--tokens", 2000)
    assert first == again
    assert first != other
    assert first["train"] != first["test"]  # the splits draw apart
    assert len(first["train"]) >= 2000 and len(first["valid"]) >= 200


def test_a_folder_that_holds_files_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "train.txt").write_text("mine\n", encoding="utf-8")
    result = invoke("synth", "copy", "--out", out)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: --out {out} is not empty: pass --overwrite to replace its files"
    ]
    assert [p.name for p in out.iterdir()] == ["train.txt"]
    assert (out / "train.txt").read_text(encoding="utf-8") == "mine\n"
    assert invoke("synth", "copy", "--out", out, "--lag", 3, "--overwrite").exit_code == 0
    first = (out / "train.txt").read_text(encoding="utf-8").splitlines()[0]
    assert first[1:3] == ".." and first[0] == first[3] != "."  # the lag-3 copy task replaced the file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["copy", "--lag", "0"], "Error: --lag must be between 1 and 10,000 (got 0)"),
        (["brackets", "--lag", "10001"], "Error: --lag must be between 1 and 10,000 (got 10001)"),
        (["parity"], "Error: unknown synthetic task 'parity': choose copy, brackets, agreement"),
        (["copy", "--lag", "3", "--symbols", "4"], "Error: --symbols must be between 1 and --lag (3) (got 4)"),
        (["agreement", "--symbols", "2"], "Error: --symbols applies to the copy task only, not agreement"),
        (["copy", "--tokens", "0"], "Error: --tokens must be at least 1 (got 0)"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("synth", *args, "--out", tmp_path / "data")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [message]
    assert not (tmp_path / "data").exists()


def test_eval_reports_the_floor_and_the_gap_of_a_synth_folder(tmp_path: Path) -> None:
    texts, floor = written(tmp_path, "copy", "--lag", 3, "--tokens", 4000)
    folder = tmp_path / "data"
    train = [
        "train",
        "--run-dir",
        tmp_path / "run",
        f"data.corpus={folder}",
        "tokenizer.kind=char",
        *TINY_MODEL,
        "train.batch_size=4",
        "train.bptt=16",
        "train.epochs=0",
        "train.max_steps=3",
        "train.tensorboard=false",
    ]
    assert invoke(*train).exit_code == 0
    checkpoint = tmp_path / "run" / "best.pt"
    for args in (["--split", "test"], ["--text", folder / "valid.txt"]):
        numbers = json.loads(invoke("eval", checkpoint, *args, "--device", "cpu", "--json").output)
        assert numbers["floor_bits_per_token"] == floor["bits_per_token"]
        assert numbers["gap_bits_per_token"] == pytest.approx(numbers["bits_per_token"] - floor["bits_per_token"])
        assert numbers["tokens"] == len(texts["test" if args[0] == "--split" else "valid"])  # the floor's tokens
    shown = invoke("eval", checkpoint, "--split", "test", "--device", "cpu").output
    assert f"floor {floor['bits_per_token']:.4f} bits/token" in shown
    elsewhere = tmp_path / "elsewhere.txt"  # the same text away from its floor.json: no floor to report
    elsewhere.write_text(texts["test"], encoding="utf-8")
    numbers = json.loads(invoke("eval", checkpoint, "--text", elsewhere, "--device", "cpu", "--json").output)
    assert numbers["floor_bits_per_token"] is None and numbers["gap_bits_per_token"] is None


def test_write_task_returns_what_floor_json_holds(tmp_path: Path) -> None:
    record = write_task(make_task("agreement", 2), tmp_path / "d", seed=1, tokens=50)
    assert json.loads((tmp_path / "d" / "floor.json").read_text(encoding="utf-8")) == record
    assert record["task"] == "agreement" and record["lag"] == 2 and record["seed"] == 1
    assert record["tokenizer"] == "char" and record["description"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["floor.json", "test.txt", "train.txt", "valid.txt"]


def test_a_floor_json_that_is_not_rnnlms_is_ignored_and_a_damaged_one_is_one_line(tmp_path: Path) -> None:
    from rnnlm.errors import DataError
    from rnnlm.synth import find_floor

    folder = tmp_path / "data"
    write_task(make_task("copy", 2), folder, seed=0, tokens=100)
    assert find_floor(folder, "char") == pytest.approx(3 / 4)
    assert find_floor(folder, "word") is None  # per character: not a word model's floor
    for other in ("{not json", '{"bits_per_token": 1.5}'):
        (folder / "floor.json").write_text(other, encoding="utf-8")
        assert find_floor(folder, "char") is None
    (folder / "floor.json").write_text('{"generator": "rnnlm synth", "bits_per_token": "NaN"}', encoding="utf-8")
    with pytest.raises(DataError, match="has no valid bits_per_token"):
        find_floor(folder, "char")


def test_an_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.write_text("mine\n", encoding="utf-8")
    result = invoke("synth", "copy", "--out", out)
    assert result.exit_code == 2 and "Error: " in result.output
    assert out.read_text(encoding="utf-8") == "mine\n"
