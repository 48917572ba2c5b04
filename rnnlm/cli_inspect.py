"""`rnnlm inspect`: look inside a trained model on a text; an HTML page and/or the numbers as JSON.

Registered on the `rnnlm` group by rnnlm/cli.py; it takes cli.py's `reports_errors` when it runs, so that
neither module imports the other while it loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--text", required=True, type=click.Path(exists=True, dir_okay=False), help="The text to read.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="The HTML page [default: the text file's name + .inspect.html, in the current folder; none with --json].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the numbers behind the page as one JSON object.")
@click.option(
    "--max-lag",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Longest lag of the gradient-flow curve (clipped to what the text allows, with a note).",
)
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1), help="Units shown per ranking.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
def inspect(checkpoint: str, text: str, out: str | None, as_json: bool, max_lag: int, top: int, device: str) -> None:
    """Colour a text by any unit's gates and state, rank the units, and draw the gradient flow."""
    from rnnlm.cli import reports_errors  # here: rnnlm.cli imports this module

    reports_errors(_inspect)(checkpoint, text, out, as_json, max_lag, top, device)


def _inspect(checkpoint: str, text: str, out: str | None, as_json: bool, max_lag: int, top: int, device: str) -> None:
    from rnnlm import runtime
    from rnnlm.checkpoint import load_model
    from rnnlm.inspect import inspect_text
    from rnnlm.report import render, write_page

    loaded = load_model(checkpoint, runtime.resolve_device(device))
    found = inspect_text(loaded.model, loaded.tokenizer, Path(text), max_lag=max_lag, top=top)
    last = found.flow.lags[-1]
    if last < max_lag:
        click.echo(
            f"Note: the text allows lags up to {last} (one less than its tokens); the gradient flow is measured "
            f"up to {last}, not {max_lag}",
            err=True,
        )
    page = None if as_json and out is None else Path(out or f"{Path(text).name}.inspect.html")
    if page is not None:
        where = Path(checkpoint).resolve()
        title = f"{where.parent.name}/{where.name} on {Path(text).name}"  # the run folder names the model
        size = write_page(render(found, top, title), page)
    if as_json:
        click.echo(json.dumps(found.to_json(top)))
    elif page is not None:
        for line in found.summary():
            click.echo(line)
        click.echo(f"Wrote {page} ({size / 1e6:.1f} MB)")
