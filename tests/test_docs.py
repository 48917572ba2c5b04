"""The README against the code: every command, option, config key, JSON key, exit code and make target the
code has is in the README, and every command line, key and code the README shows exists.

What the README keeps so that these tests can read it:
- each command has a synopsis, the first code span after `**NAME** — `: `rnnlm NAME ARG [--opt X] ...`,
  naming every option (hidden ones too; both halves of an on/off pair), every argument by its metavar
  (CHECKPOINT, KEY=VALUE), and a choice's values exactly, as `--opt a|b|c`; `rnnlm COMMAND --help`, `-h`
  and the group's own options are in the Commands section's opening lines;
- any `rnnlm NAME ...` in code (inline or in a block) uses only NAME's options; "default `--opt VALUE`"
  written in NAME's part states NAME's default;
- the config reference is the README's tables: every key is in a table row as `section.key`, the values of
  a key that takes a few names are in a row with the key, and "(default X)" in a row for one key is its
  default; every `section.key` written anywhere is a key;
- the exit-code table lists exactly the codes rnnlm exits with;
- under a command, "`--json` prints one object with `a`, `b`, ... ." names exactly the keys it prints;
- the code snippets show exactly the Makefile's targets as `make TARGET`; data/README.md shows the
  registry's mirror layout.
The command objects and dataclasses are read through click's and dataclasses' public APIs, so the tests
follow the code wherever it moves.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any, Iterator

import click
import pytest
from helpers import TINY_MODEL, invoke

from rnnlm import cli as cli_module
from rnnlm.cli import cli
from rnnlm.config import Config
from rnnlm.data import registry
from rnnlm.errors import RnnlmError

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
SYNOPSIS = re.compile(r"^\*\*([\w-]+)\*\* — `([^`]+)`", re.MULTILINE)
FILE_SUFFIXES = {"py", "txt", "yaml", "pt", "md", "json"}


# ---- reading the README ----


def code_snippets(text: str) -> Iterator[str]:
    """Each line of a fenced block and each inline code span."""
    for i, part in enumerate(re.split(r"^```.*$", text, flags=re.MULTILINE)):
        if i % 2:
            yield from part.splitlines()
        else:
            yield from re.findall(r"`([^`\n]+)`", part)


def command_parts(text: str) -> dict[str, tuple[str, str]]:
    """NAME -> (its synopsis, its part of the README: from its synopsis to the next one or heading)."""
    parts = {}
    for match in SYNOPSIS.finditer(text):
        end = re.compile(r"^\*\*[\w-]+\*\* — |^## ", re.MULTILINE).search(text, match.end())
        parts[match.group(1)] = (match.group(2), text[match.start():end.start() if end else len(text)])
    return parts


def section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def option_names(words: str) -> list[str]:
    """`[--progress/--no-progress] --seed=3 KEY=VALUE` -> ['--progress', '--no-progress', '--seed']."""
    return [name for word in words.split() for name in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", word.split("=")[0])]


# ---- reading the code ----


def commands(group: click.Group) -> dict[str, click.Command]:
    ctx = click.Context(group)
    return {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}


def options(command: click.Command) -> list[click.Option]:
    """Every option, hidden ones too, except --help (documented once for all commands)."""
    ctx = click.Context(command)
    help_option = command.get_help_option(ctx)
    return [p for p in command.get_params(ctx) if isinstance(p, click.Option) and p is not help_option]


def all_names(command: click.Command) -> set[str]:
    ctx = click.Context(command)
    return {name for param in command.get_params(ctx) if isinstance(param, click.Option)
            for name in [*param.opts, *param.secondary_opts]}


def config_keys() -> dict[str, tuple[Any, type]]:
    """`section.key` -> (its default, its type) for every field of the config dataclasses."""
    config = Config()
    keys = {}
    for section_field in dataclasses.fields(config):
        values = getattr(config, section_field.name)
        hints = typing.get_type_hints(type(values))
        for field in dataclasses.fields(values):
            keys[f"{section_field.name}.{field.name}"] = (getattr(values, field.name), hints[field.name])
    return keys


def exit_codes() -> set[int]:
    """Every code rnnlm exits with: success, click's own errors, each RnnlmError's, and the two stops."""
    classes, found = [RnnlmError], set()
    while classes:
        cls = classes.pop()
        found.add(cls.exit_code)
        classes.extend(cls.__subclasses__())
    return {0, click.ClickException.exit_code, click.UsageError.exit_code, *found,
            cli_module.STOPPED_BY_SIGINT, cli_module.STOPPED_BY_SIGTERM}


# ---- the rules, as functions of the command group and the README (so a test can feed them a variant) ----


def undocumented_options(group: click.Group, text: str) -> list[str]:
    """What a command has that its synopsis lacks: options, arguments, a choice's values, or the synopsis."""
    parts, missing = command_parts(text), []
    for name, command in commands(group).items():
        if name not in parts:
            missing.append(f"{name}: no synopsis `**{name}** — `rnnlm {name} ...``")
            continue
        synopsis = parts[name][0]
        if not synopsis.startswith(f"rnnlm {name}"):
            missing.append(f"{name}: the synopsis starts {synopsis[:20]!r}")
        written = set(option_names(synopsis))
        ctx = click.Context(command)
        for param in command.get_params(ctx):
            if isinstance(param, click.Argument):
                metavar = (param.metavar or param.name.upper()).strip("[].")  # [KEY=VALUE]... -> KEY=VALUE
                if not re.search(rf"(?<![\w=]){re.escape(metavar)}(?![\w=])", synopsis):
                    missing.append(f"{name} {metavar}")
        for option in options(command):
            missing += [f"{name} {opt}" for opt in [*option.opts, *option.secondary_opts] if opt not in written]
            if isinstance(option.type, click.Choice):
                shown = re.search(rf"{re.escape(option.opts[-1])} ([\w|]+)", synopsis)
                if shown is None or set(shown.group(1).split("|")) != set(map(str, option.type.choices)):
                    missing.append(f"{name} {option.opts[-1]} {'|'.join(map(str, option.type.choices))}")
    return missing


def commands_that_do_not_exist(group: click.Group, text: str) -> list[str]:
    """`rnnlm NAME --opt` in the README's code where rnnlm has no such command or NAME no such option."""
    known, wrong = commands(group), []
    for snippet in code_snippets(text):
        tokens = snippet.split("#", 1)[0].split()  # a comment after a command is prose
        for i, token in enumerate(tokens[:-1]):
            if token != "rnnlm" or not re.fullmatch(r"[a-z][\w-]*|-.*", tokens[i + 1]):
                continue  # `rnnlm COMMAND --help`, or rnnlm named in prose
            name = tokens[i + 1]
            command = group if name.startswith("-") else known.get(name)
            if command is None:
                wrong.append(f"no command {name!r}: {snippet}")
                continue
            names = all_names(command)
            wrong += [f"{opt}: {snippet}" for t in tokens[i + 1:] for opt in option_names(t) if opt not in names]
    return wrong


# ---- commands and options ----


def test_every_option_and_argument_is_in_its_commands_synopsis() -> None:
    assert undocumented_options(cli, README) == []


def test_every_rnnlm_command_line_in_the_readme_exists() -> None:
    assert commands_that_do_not_exist(cli, README) == []


def test_an_option_added_without_docs_is_caught() -> None:
    """The rules can fail: a new option on `eval`, or a line using one that does not exist, is reported."""
    evaluate = commands(cli)["eval"]
    changed = click.Command("eval", params=[*evaluate.params, click.Option(["--new-knob"], type=int)])
    group = click.Group("rnnlm", commands={**commands(cli), "eval": changed})
    assert undocumented_options(group, README) == ["eval --new-knob"]
    assert commands_that_do_not_exist(cli, README + "\n`rnnlm eval X --new-knob 3`\n") == \
        ["--new-knob: rnnlm eval X --new-knob 3"]


def test_the_groups_options_and_help_are_in_the_commands_section() -> None:
    intro = section(README, "Commands").split("**", 1)[0]
    shown = {opt for snippet in code_snippets(intro) for opt in option_names(snippet)}
    assert all_names(cli) <= shown
    assert "`rnnlm COMMAND --help`" in intro


def test_defaults_the_readme_states_are_the_commands() -> None:
    stated = []
    for name, (_, part) in command_parts(README).items():
        by_name = {opt: option for option in options(commands(cli)[name]) for opt in option.opts}
        for opt, value in re.findall(r"default\s+`(--[\w-]+) ([^`]+)`", part):
            stated.append(opt)
            assert str(by_name[opt].default) == value, (name, opt)
    assert len(stated) >= 3  # eval's --batch-size and --bptt, fill's --top-k at least


# ---- configuration ----


def test_every_config_key_is_in_the_config_reference() -> None:
    rows = "\n".join(table_rows(README))
    assert [key for key in config_keys() if f"`{key}`" not in rows] == []


def test_every_config_key_the_readme_names_exists() -> None:
    sections = {key.split(".")[0] for key in config_keys()}
    named = {match.group(0) for snippet in code_snippets(README)
             if not snippet.startswith(("$ ", "Error: "))  # an example of a wrong key, checked below
             for match in re.finditer(r"(?<![\w/.$-])([a-z]+)\.([a-z_]+)\b(?![./])", snippet)
             if match.group(1) in sections and match.group(2) not in FILE_SUFFIXES}
    assert named and sorted(named - set(config_keys())) == []


def test_the_values_of_each_choice_key_are_in_its_rows() -> None:
    missing = []
    for key, (_, hint) in config_keys().items():
        if typing.get_origin(hint) is not typing.Literal:
            continue
        rows = " ".join(row for row in table_rows(README) if f"`{key}`" in row)
        missing += [f"{key}: {value}" for value in typing.get_args(hint)
                    if not re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", rows)]
    assert missing == []


def same(written: str, value: Any) -> bool:
    """Whether the README's `16,000,000`, `true`, `""` or `fp32` is the default `value`."""
    try:
        return float(written.replace(",", "")) == float(value)
    except (TypeError, ValueError):
        if isinstance(value, bool):
            return written == str(value).lower()
        return written == ('""' if value == "" else str(value))


def test_defaults_in_the_config_reference_are_the_dataclasses() -> None:
    keys, checked = config_keys(), []
    for row in table_rows(README):
        first = row.split("|")[1]
        named = re.findall(r"`([^`]+)`", first)
        if len(named) != 1 or named[0] not in keys:
            continue  # a header, or a row for several keys
        rest = row[len(first) + 2:]
        for written in re.findall(r"\(default `?([^`;:)]+)`?", rest) + re.findall(r"`?([\w.-]+)`? \(default\)", rest):
            checked.append(named[0])
            assert same(written.strip(), keys[named[0]][0]), (named[0], written)
    assert len(checked) >= 10


def test_every_corpus_name_is_in_the_data_corpus_row() -> None:
    row = next(row for row in table_rows(README) if row.startswith("| `data.corpus` |"))
    assert [name for name in [*registry.REGISTRY, *registry.LOCAL_CORPORA] if f"`{name}`" not in row] == []


def test_the_config_error_the_readme_shows_is_what_rnnlm_prints() -> None:
    examples = re.findall(r"^\$ rnnlm (.+)\n(Error: .+)$", README, re.MULTILINE)
    assert examples
    for command, error in examples:
        result = invoke(*command.split())
        assert (result.exit_code, result.output.strip()) == (2, error)


def test_the_mirror_layout_in_data_readme_is_the_registrys() -> None:
    """data/README.md shows where each file of a named corpus goes under RNNLM_DATA."""
    layout = (Path(__file__).resolve().parents[1] / "data" / "README.md").read_text(encoding="utf-8")
    expected = [f"{entry.name}/{remote.name}" for entry in registry.REGISTRY.values()
                for remote in entry.files.values()]
    assert [path for path in expected if not re.search(rf"(?<![\w/-]){re.escape(path)}(?!\S)", layout)] == []


def test_the_make_targets_are_those_the_readme_shows() -> None:
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text(encoding="utf-8")
    targets = set(re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE).group(1).split())
    shown = {match for snippet in code_snippets(README) for match in re.findall(r"^make ([\w-]+)", snippet)}
    assert shown == targets


# ---- exit codes ----


def test_the_exit_code_table_lists_every_code_rnnlm_exits_with() -> None:
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section(README, "Exit codes"), re.MULTILINE)}
    assert documented == exit_codes()


def test_each_errors_documented_code_is_its_own() -> None:
    classes, seen = [RnnlmError], 0
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        said = re.search(r"\(exit ([\d or]+)\)", cls.__doc__ or "")
        if said is None:
            continue
        seen += 1
        codes = {int(code) for code in re.findall(r"\d+", said.group(1))}
        assert codes == {cls.exit_code} or codes == {cli_module.STOPPED_BY_SIGINT, cli_module.STOPPED_BY_SIGTERM}, cls
    assert seen >= 5


# ---- JSON output ----


def documented_json_keys(command: str) -> list[str]:
    part = command_parts(README)[command][1]
    sentence = re.search(r"`--json`\s+prints\s+one\s+object\s+with\s(.+?)\.(?:\s|$)", part, re.DOTALL)
    assert sentence, f"no '`--json` prints one object with ...' under {command}"
    return re.findall(r"`(\w+)`", sentence.group(1))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_json_keys_are_those_the_readme_lists(tiny_corpus: Path, tmp_path: Path, bidirectional: bool) -> None:
    tiny = [f"data.corpus={tiny_corpus}", *TINY_MODEL, "train.batch_size=4", "train.bptt=8", "train.epochs=0",
            "train.max_steps=2", "train.tensorboard=false", "data.valid_fraction=0.1", "data.test_fraction=0.1",
            f"model.bidirectional={str(bidirectional).lower()}"]
    assert invoke("train", "--run-dir", tmp_path / "run", *tiny).exit_code == 0
    result = invoke("eval", tmp_path / "run" / "best.pt", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    numbers, documented = json.loads(result.output), documented_json_keys("eval")
    heads = {key for key, value in numbers.items() if isinstance(value, dict)}
    assert heads == ({"backward", "infill"} if bidirectional else set())
    assert set(numbers) == set(documented) - ({"backward", "infill"} - heads)
    assert all(set(numbers[head]) == set(documented[:8]) for head in heads)  # "the first eight keys"


def test_the_tokenize_json_keys_are_those_the_readme_lists(tiny_corpus: Path) -> None:
    result = invoke("tokenize", f"data.corpus={tiny_corpus}", "--show", 0, "--json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)) == set(documented_json_keys("tokenize"))
