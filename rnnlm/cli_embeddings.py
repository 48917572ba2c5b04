"""`rnnlm export-embeddings`: a word model's learned input embedding as GloVe or word2vec text.

Registered on the `rnnlm` group by rnnlm/cli.py; it takes cli.py's `reports_errors` when it runs, so that
neither module imports the other while it loads.
"""

from __future__ import annotations

import click


@click.command(name="export-embeddings")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The file to write.")
@click.option(
    "--format",
    "form",
    type=click.Choice(["glove", "word2vec"]),
    default="glove",
    show_default=True,
    help="GloVe text (a word and its numbers a line) or word2vec text (the same after a `COUNT DIM` line).",
)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def export_embeddings(checkpoint: str, out: str, form: str, overwrite: bool) -> None:
    """Write a word model's input embedding, one vocabulary word a line (readable by model.init_embeddings)."""
    from rnnlm.cli import reports_errors
    from rnnlm.embeddings import export_embeddings as export

    words, size = reports_errors(export)(checkpoint, out, form, overwrite)
    click.echo(f"wrote {words:,} vectors of {size} numbers to {out} ({form} text)", err=True)
