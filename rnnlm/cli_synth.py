"""`rnnlm synth`: write a synthetic task with a known entropy floor (rnnlm/synth.py) as a corpus folder."""

from __future__ import annotations

from pathlib import Path

import click

from rnnlm.config import MAX_SEED, MIN_SEED


@click.command()
@click.argument("task", metavar="TASK")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The folder to write the files into.")
@click.option(
    "--lag", default=10, show_default=True, type=int, help="Steps to remember: copy distance, depth, or distractors."
)
@click.option(
    "--symbols", type=int, help="copy: letters to recall per line [default: 1; equal to --lag: classic copy]."
)
@click.option(
    "--seed", default=0, show_default=True, type=click.IntRange(MIN_SEED, MAX_SEED), help="Same seed, same files."
)
@click.option(
    "--tokens", default=100_000, show_default=True, type=int, help="Characters of train.txt (valid, test: a tenth)."
)
@click.option("--overwrite", is_flag=True, help="Replace the files of an --out folder that is not empty.")
def synth(task: str, out: str, lag: int, symbols: int | None, seed: int, tokens: int, overwrite: bool) -> None:
    """Write TASK (copy, brackets or agreement) as train/valid/test.txt with floor.json, its exact entropy rate."""
    from rnnlm.cli import reports_errors  # here: rnnlm.cli imports this module

    reports_errors(_synth)(task, Path(out), lag, symbols, seed, tokens, overwrite)


def _synth(task: str, out: Path, lag: int, symbols: int | None, seed: int, tokens: int, overwrite: bool) -> None:
    from rnnlm.synth import make_task, write_task

    record = write_task(make_task(task, lag, symbols), out, seed=seed, tokens=tokens, overwrite=overwrite)
    sizes = ", ".join(f"{name} {split['tokens']:,}" for name, split in record["splits"].items())
    click.echo(f"{out}: {record['description']}")
    click.echo(f"characters: {sizes} | floor {record['bits_per_token']:.6f} bits/token (floor.json)")
