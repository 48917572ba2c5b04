"""The `rnnlm` command line: train, sample, eval. Every user-facing print and exit code lives here.

Exit codes: 0 success, 1 a known failure (data, checkpoint, non-finite loss), 2 a usage or
configuration error, 130 stopped by Ctrl-C (SIGINT), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from rnnlm import __version__
from rnnlm.config import MAX_SEED, MIN_SEED
from rnnlm.errors import Interrupted, RnnlmError, storage_error

if TYPE_CHECKING:
    from rnnlm.data.analysis import Report
    from rnnlm.evaluate import CheckpointScore
    from rnnlm.models import BidirectionalLM

SPLITS = ("train", "valid", "test")
# the operating system refusing a file is the user's to fix, never a bug in rnnlm: one line, not a traceback
REFUSED_BY_THE_SYSTEM = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
SEED = click.IntRange(MIN_SEED, MAX_SEED)
STOPPED_BY_SIGINT, STOPPED_BY_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM
_standalone = False  # running as the `rnnlm` program (main), not called in another program's process


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf, which every range comparison lets through."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


start_option = click.option(
    "--start",
    type=click.Choice(["warm", "zero"]),
    default="warm",
    show_default=True,
    help="What a fresh start reads the first line end from: the checkpoint's warm start states (where the "
    "model usually is at a line end), or the zero state (as before rnnlm kept them; for comparison).",
)


class CommandError(click.ClickException):
    """A known rnnlm failure shown as one `Error: ...` line, with rnnlm's exit code."""

    def __init__(self, error: RnnlmError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code
        self.prefix = error.prefix

    def show(self, file: Any = None) -> None:
        click.echo(f"{self.prefix}: {self.format_message()}", err=True)


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn RnnlmError into one clean line and Ctrl-C outside training into exit 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Interrupted as exc:
            _exit_at_once_on_signals(exc.exit_code)
            raise CommandError(exc) from None
        except RnnlmError as exc:
            raise CommandError(exc) from None
        except OSError as exc:  # what the library did not name itself: a run folder it may not create, ...
            if exc.errno not in REFUSED_BY_THE_SYSTEM:
                raise
            raise CommandError(storage_error(exc, doing="accessing")) from None
        except KeyboardInterrupt as exc:
            code = STOPPED_BY_SIGTERM if isinstance(exc, Terminated) else STOPPED_BY_SIGINT
            _exit_at_once_on_signals(code)
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
                click.echo("\nInterrupted: stopped at once; checkpoints on disk are intact", err=True)
            sys.exit(code)

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which handles it itself): raised where the program is, as Ctrl-C
    is, so that what a start-up changed is put back (the old run an --overwrite set aside); exit 143."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _exit_at_once_on_signals(code: int) -> None:
    """After a stop, another Ctrl-C or SIGTERM ends the process at once with the same exit code: Python's
    default handler would raise KeyboardInterrupt in whatever cleanup runs, or kill it (exit -2).
    Only as the `rnnlm` program: a caller of the commands in its own process keeps its handlers."""
    if not _standalone:
        return

    def exit_now(signum: int, frame: object) -> None:
        _flush_and_exit(code)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, exit_now)


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rnnlm")
def cli() -> None:
    """Train, sample and evaluate recurrent language models (RNN, GRU, LSTM)."""


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML recipe, e.g. configs/shakespeare-char.yaml.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Folder for best.pt, last.pt, config.yaml and TensorBoard events [default: runs/<config name>].",
)
@click.option("--device", help="auto, cpu, cuda, cuda:N or mps (same as train.device=...).")
@click.option("--seed", type=SEED, help="Random seed (same as train.seed=...).")
@click.option(
    "--resume",
    metavar="RUN_DIR|auto",
    help="Continue the run in RUN_DIR exactly where it stopped; 'auto' resumes --run-dir if it holds a run.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the run already in --run-dir (kept until the new run saves its first last.pt).",
)
@click.option(
    "--allow-data-change",
    is_flag=True,
    help="With --resume: go on although the corpus's token ids differ from those the run trained on.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: only on a terminal].")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@reports_errors
def train(
    config_path: str | None,
    run_dir: str | None,
    device: str | None,
    seed: int | None,
    resume: str | None,
    overwrite: bool,
    allow_data_change: bool,
    progress: bool | None,
    overrides: tuple[str, ...],
) -> None:
    """Train a model; KEY=VALUE pairs such as model.hidden_size=256 override the config."""
    from rnnlm.runs import plan_run
    from rnnlm.train import Trainer

    flags = [f"train.device={device}"] * bool(device) + [f"train.seed={seed}"] * (seed is not None)
    config, folder, saved = plan_run(config_path, [*overrides, *flags], run_dir, resume, overwrite)
    trainer = Trainer(
        config, folder, resume_from=saved, overwrite=overwrite, allow_data_change=allow_data_change, progress=progress
    )  # takes nothing yet: setup takes the run folder, inside the try
    finished = False
    try:
        trainer.setup()
        summary = trainer.fit()
        finished = True
    finally:
        trainer.close(finished)
    if not trainer.group.is_main:  # under torchrun, rank 0 speaks for the job
        return
    from rnnlm.evaluate import perplexity

    best = (
        f"best validation perplexity {perplexity(summary.best_val_loss):.2f}"
        if summary.best_val_loss is not None
        else ""
    )
    click.echo(
        f"Done: {summary.steps:,} steps ({summary.tokens_per_sec:,.0f} tokens/s), {best}. Checkpoints in {folder}/",
        err=True,
    )
    test = trainer.corpus.splits.get("test")
    held_out = "test" if test is not None and len(test.ids) else "valid"  # a recipe may keep no test split
    click.echo(f"Next: rnnlm sample {folder}/best.pt   |   rnnlm eval {folder}/best.pt --split {held_out}", err=True)


@cli.command(name="config")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="YAML recipe.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@reports_errors
def show_config(config_path: str | None, overrides: tuple[str, ...]) -> None:
    """Print the resolved configuration (defaults < file < overrides) as YAML, and check it."""
    import yaml

    from rnnlm.config import load_config

    click.echo(yaml.safe_dump(load_config(config_path, overrides).to_dict(), sort_keys=False), nl=False)


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--prompt", default="", help="Text to continue [default: start at a line start].")
@click.option("--length", default=500, show_default=True, type=click.IntRange(min=0), help="Tokens to generate.")
@click.option(
    "--temperature",
    default=1.0,
    show_default=True,
    type=FiniteFloatRange(min=0.0),
    help="Sharpness of the distribution; 0 always takes the most likely token.",
)
@click.option(
    "--top-k",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Sample among the k most likely tokens only (0: all).",
)
@click.option(
    "--top-p",
    default=1.0,
    show_default=True,
    type=FiniteFloatRange(min=0.0, max=1.0, min_open=True),
    help="Sample among the most likely tokens holding this probability mass (1: all).",
)
@click.option("--seed", type=SEED, help="Same seed, same text [default: a random seed, printed].")
@click.option(
    "--num-samples",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Independent samples, generated together.",
)
@click.option("--reverse", is_flag=True, help="Bidirectional models: generate right to left, ending with --prompt.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="bf16: generate from a bf16 copy of the weights, half the bytes read per token.",
)
@start_option
@reports_errors
def sample(
    checkpoint: str,
    prompt: str,
    length: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    num_samples: int,
    reverse: bool,
    device: str,
    precision: str,
    start: str,
) -> None:
    """Generate text from a checkpoint."""
    import torch

    from rnnlm import native, runtime
    from rnnlm.checkpoint import load_model
    from rnnlm.sample import generate, generate_reverse

    torch_device = runtime.resolve_device(device)
    loaded = load_model(checkpoint, torch_device)
    if reverse and not loaded.config.model.bidirectional:
        raise click.UsageError("--reverse needs a bidirectional model (model.bidirectional: true)")
    if reverse and precision != "fp32":
        raise click.UsageError("--precision bf16 applies to left-to-right generation, not --reverse")
    given = click.get_current_context().get_parameter_source("start") == click.core.ParameterSource.COMMANDLINE
    if reverse and given and start == "warm":  # not to be ignored in silence
        raise click.UsageError(
            "--start warm applies to left-to-right generation: --reverse starts the backward "
            "stack at zero, as training does"
        )
    unknown = loaded.tokenizer.unknown(prompt)
    if unknown:
        click.echo(
            f"Warning: the vocabulary lacks {', '.join(map(repr, unknown[:10]))}"
            f"{' ...' if len(unknown) > 10 else ''}; read as <unk>",
            err=True,
        )
    if seed is None:
        seed = secrets.randbelow(2**31)
        click.echo(f"(seed {seed})", err=True)
    settings: dict[str, Any] = dict(
        length=length,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_samples=num_samples,
        seed=seed,
        device=torch_device,
    )
    if reverse:
        texts = generate_reverse(cast("BidirectionalLM", loaded.model), loaded.tokenizer, suffix=prompt, **settings)
    else:
        stream = functools.partial(click.echo, nl=False) if num_samples == 1 else None
        weights = torch.bfloat16 if precision == "bf16" else None
        texts = generate(
            loaded.model,
            loaded.tokenizer,
            prompt=prompt,
            on_text=stream,
            weights=weights,
            start=_start(loaded.model, start),
            **settings,
        )
    if reverse and num_samples == 1:
        click.echo(texts[0], nl=False)
    for i, text in enumerate(texts if num_samples > 1 else []):
        click.echo(f"{'' if i == 0 else chr(10)}----- sample {i + 1} -----\n{text}")
    click.echo()
    unbuilt = native.failed()
    if unbuilt:  # the text is the same, only slower: said after it, once
        click.echo(
            f"Note: sampled through torch, slower than rnnlm's sampler in C (2.6-2.9x for a PTB word model), "
            f"which could not be built here: {unbuilt}. Install a C compiler (gcc or clang) for it, or set "
            f"RNNLM_NATIVE=0 to silence this.",
            err=True,
        )


@cli.command(name="eval")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="test",
    show_default=True,
    help="Split of the corpus the model was trained on.",
)
@click.option("--text", type=click.Path(exists=True, dir_okay=False), help="Score this text file instead.")
@click.option(
    "--batch-size",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Parallel streams; 1 gives every token its full left context.",
)
@click.option("--bptt", default=256, show_default=True, type=click.IntRange(min=1), help="Tokens per window.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--impl",
    type=click.Choice(["fused", "reference"]),
    help="Run the weights through torch's fused kernels or the reference cells [default: as trained].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="Forward pass under autocast: bf16 / fp16 are faster on some hardware, fp32 is exact.",
)
@start_option
@click.option(
    "--cache",
    is_flag=True,
    help="Mix in the neural cache (Grave et al. 2017): the words that followed similar hidden states.",
)
@click.option("--cache-size", default=2000, show_default=True, type=int, help="Positions the cache holds.")
@click.option(
    "--cache-theta",
    default=0.6,
    show_default=True,
    type=float,
    help="How sharply the cache prefers the most similar states.",
)
@click.option("--cache-lambda", default=0.2, show_default=True, type=float, help="The cache's share of the mixture.")
@click.option(
    "--dynamic",
    is_flag=True,
    help="Dynamic evaluation (Krause et al. 2018): a gradient step on each segment once it is scored.",
)
@click.option(
    "--dynamic-method",
    type=click.Choice(["sgd", "rms"]),
    default="sgd",
    show_default=True,
    help="Plain SGD, or steps scaled by the training split's RMS gradients.",
)
@click.option("--dynamic-lr", type=float, help="Learning rate [default: 1 with sgd, 1e-4 with rms].")
@click.option(
    "--dynamic-decay", default=0.005, show_default=True, type=float, help="Pull back to the trained weights per step."
)
@click.option("--dynamic-segment", default=20, show_default=True, type=int, help="Tokens between two steps.")
@click.option(
    "--tune",
    is_flag=True,
    help="Choose the cache's theta and lambda and the dynamic learning rate on the validation split.",
)
@click.option(
    "--tune-tokens",
    default=20_000,
    show_default=True,
    type=int,
    help="With --tune: how many of the validation split's first tokens to tune on.",
)
@reports_errors
def evaluate_command(
    checkpoint: str,
    split: str,
    text: str | None,
    batch_size: int,
    bptt: int,
    as_json: bool,
    impl: str | None,
    device: str,
    precision: str,
    start: str,
    cache: bool,
    dynamic: bool,
    tune: bool,
    **settings: Any,
) -> None:
    """Perplexity and bits per token, character and byte of a checkpoint on a split or a text."""
    from rnnlm import runtime
    from rnnlm.adaptation import plan_methods, score_adapted
    from rnnlm.checkpoint import load_model
    from rnnlm.evaluate import eval_source, floor_numbers

    methods = plan_methods(
        cache=cache,
        dynamic=dynamic,
        tune=tune,
        given=_given(),
        values=settings,
        reported_split=None if text else split,
        batch_size=batch_size,
        precision=precision,
    )
    torch_device = runtime.resolve_device(device)
    loaded = load_model(checkpoint, torch_device, impl)
    runtime.check_precision(precision, torch_device, loaded.config.model.impl, loaded.config.model.cell)
    log = functools.partial(click.echo, err=True)
    scored, source = eval_source(loaded, split=split, text=text, log=log)
    start = _start(loaded.model, start)
    adapted = score_adapted(
        loaded,
        scored,
        source,
        methods,
        tune_tokens=settings["tune_tokens"] if tune else None,
        batch_size=batch_size,
        bptt=bptt,
        device=torch_device,
        precision=precision,
        start=start,
        log=log,
    )
    score = adapted.score
    floor = floor_numbers(loaded, text, score.result)
    if as_json:
        click.echo(
            json.dumps(
                _finite_or_null(
                    {
                        **score.result.to_dict(),
                        "source": source,
                        "batch_size": batch_size,
                        "unk_tokens": score.unk_tokens,
                        "lossless": not score.lossy,
                        "precision": precision,
                        "start": start,
                        **adapted.methods.to_dict(),
                        "tune": adapted.tuned.to_dict() if adapted.tuned else None,
                        **floor,
                    }
                ),
                allow_nan=False,
            )
        )
        return
    _print_score(score, batch_size, bptt, start, loaded.tokenizer.kind)
    if floor["floor_bits_per_token"] is not None:
        bits, gap = floor["floor_bits_per_token"], floor["gap_bits_per_token"]
        click.echo(f"floor {bits:.4f} bits/token (the generating process's entropy) | gap {gap:.4f} bits/token")
    click.echo(f"method: {adapted.methods.describe()}" + (f"; {adapted.tuned.describe()}" if adapted.tuned else ""))


def _given() -> set[str]:
    """The names of the options the command line set (not left at their defaults)."""
    context = click.get_current_context()
    return {
        name for name in context.params if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    }


def _print_score(score: CheckpointScore, batch_size: int, bptt: int, start: str, kind: str) -> None:
    result, lossy = score.result, score.lossy
    context = "full left context" if batch_size == 1 else f"{batch_size} parallel streams"
    click.echo(
        f"{score.source}: {result.tokens:,} tokens, {result.chars:,} characters, batch size {batch_size} "
        f"({context}), {start} start"
    )
    labels = {
        "backward": f"backward (right context within {bptt}-token windows)",
        "infill": "infill pseudo-perplexity (both neighbours' contexts)",
    }
    if result.heads:
        click.echo("forward (the language-model number, comparable with unidirectional models):")
    for name, numbers in [("", result), *result.heads.items()]:
        if name:
            click.echo(f"{labels.get(name, name)}: {numbers.tokens:,} tokens")
        click.echo(
            f"loss {numbers.loss:.4f} nats/token | perplexity {numbers.ppl:.2f} | {numbers.bits_per_token:.4f} "
            f"bits/token | {numbers.bits_per_char:.4f} bits/char | {numbers.bits_per_byte:.4f} bits/byte"
            + " (lossy*)"
            * lossy
        )
    if lossy:
        click.echo(_lossy_note(kind, score.unk_tokens))


def _finite_or_null(value: Any) -> Any:
    """JSON has no NaN or Infinity: a perplexity too large for a float becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    return value


def _lossy_note(kind: str, unk: int) -> str:
    what = (
        f"word tokens fold whitespace and <unk> stands for every rare word ({unk:,} <unk> tokens here)"
        if kind == "word"
        else f"{unk:,} characters of this text are not in the vocabulary and scored as <unk>"
    )
    return (
        f"* lossy: {what}, so bits per character and byte are lower than a lossless model of the raw text "
        f"would get; compare them with care"
    )


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML recipe whose tokenizer to build on its corpus's training split.",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    help="Use this checkpoint's tokenizer instead (and its corpus, unless --text).",
)
@click.option(
    "--text",
    type=click.Path(exists=True, dir_okay=False),
    help="Measure this text file [default: the corpus's validation split].",
)
@click.option(
    "--show",
    default=300,
    show_default=True,
    type=click.IntRange(min=0),
    help="Characters of the text to print split into tokens (0: none).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as one JSON object.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@reports_errors
def tokenize(
    config_path: str | None,
    checkpoint: str | None,
    text: str | None,
    show: int,
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Show how a tokenizer splits text, with tokens per character and coverage, to choose a vocabulary size."""
    from rnnlm.checkpoint import load_tokenizer
    from rnnlm.config import load_config
    from rnnlm.data.analysis import report

    if checkpoint and (config_path or overrides):
        raise click.UsageError("--checkpoint brings its own tokenizer and configuration: drop --config and KEY=VALUE")
    tokenizer, config = load_tokenizer(checkpoint) if checkpoint else (None, load_config(config_path, overrides))
    result = report(config, tokenizer, Path(text) if text else None, show, log=functools.partial(click.echo, err=True))
    if as_json:
        click.echo(json.dumps({"kind": result.kind, "source": result.source, **result.stats.to_dict()}))
        return
    _print_report(result)


def _print_report(result: Report) -> None:
    s = result.stats
    fallback = "byte-fallback or <unk>" if result.kind in ("bpe", "unigram") else "<unk>"
    if result.shown:
        click.echo(result.shown.rstrip("\n") + "\n")
    click.echo(
        f"{result.kind} tokenizer, vocabulary {s.vocab_size:,}, on {result.source}: {s.chars:,} characters, "
        f"{s.bytes:,} bytes, {s.tokens:,} tokens"
    )
    click.echo(
        f"tokens per character {s.tokens_per_char:.4f} ({1 / max(s.tokens_per_char, 1e-12):.2f} characters "
        f"per token) | tokens per byte {s.tokens_per_byte:.4f}"
    )
    click.echo(
        f"vocabulary used {s.used:,} of {s.vocab_size:,} ({s.used / s.vocab_size:.1%}) | {fallback} tokens "
        f"{s.fallback:,} ({s.fallback_share:.2%} of tokens)"
    )


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("text")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Candidates per blank.")
@click.option("--blank", default="___", show_default=True, help="The marker of a blank in TEXT.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@start_option
@reports_errors
def fill(checkpoint: str, text: str, top_k: int, blank: str, device: str, start: str) -> None:
    """Rank the likeliest tokens for each blank in TEXT (bidirectional models), e.g. "the cat sat on the ___ ."."""
    from rnnlm import runtime
    from rnnlm.checkpoint import load_model
    from rnnlm.sample import fill_blanks

    torch_device = runtime.resolve_device(device)
    loaded = load_model(checkpoint, torch_device)
    if not loaded.config.model.bidirectional:
        raise click.UsageError("fill needs a bidirectional model (train one with model.bidirectional=true)")
    if blank not in text:
        raise click.UsageError(f"TEXT has no blank: mark each one with {blank}")
    rankings = fill_blanks(
        cast("BidirectionalLM", loaded.model),  # bidirectional: checked above
        loaded.tokenizer,
        text,
        blank=blank,
        top_k=top_k,
        device=torch_device,
        start=_start(loaded.model, start),
    )
    for number, ranking in enumerate(rankings, start=1):
        if len(rankings) > 1:
            click.echo(f"blank {number}:")
        for token, probability in ranking:
            click.echo(f"  {probability:7.2%}  {token!r}")


def _start(model: Any, start: str) -> str:
    """`--start`, with a note when a checkpoint from before warm start states can only start at zero."""
    if start == "warm" and model.start_states is None:
        click.echo(
            "Note: this checkpoint holds no warm start states (saved before rnnlm kept them): starting "
            "from the zero state, whose first tokens read worse",
            err=True,
        )
        return "zero"
    return start


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--text", required=True, type=click.Path(exists=True, dir_okay=False), help="The text file to score.")
@click.option(
    "--format",
    "form",
    type=click.Choice(["tsv", "jsonl"]),
    default="tsv",
    show_default=True,
    help="A tab-separated table with a header row, or one JSON object a line.",
)
@click.option(
    "--words", is_flag=True, help="Sum the tokens to whitespace-separated words (line ends are rows of their own)."
)
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file [default: standard output].")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@start_option
@reports_errors
def score(checkpoint: str, text: str, form: str, words: bool, out: str | None, device: str, start: str) -> None:
    """Per-token (or per-word) log-probability, surprisal and entropy of a text, in full left context."""
    import itertools

    from rnnlm import runtime
    from rnnlm.checkpoint import load_model
    from rnnlm.surprisal import token_scores

    torch_device = runtime.resolve_device(device)
    loaded = load_model(checkpoint, torch_device)
    rows = token_scores(
        loaded.model, loaded.tokenizer, Path(text), words=words, start=_start(loaded.model, start), device=torch_device
    )
    first = next(rows, None)  # an empty or unreadable text fails here, before the header is written
    rows = itertools.chain([first] if first is not None else [], rows)
    unit = "word" if words else "token"
    if out is None:
        _write_scores(rows, form, unit, functools.partial(click.echo, nl=False))
        return
    partial = Path(out).with_name(f".{Path(out).name}.{os.getpid()}.part")  # a failed run leaves --out as it was
    try:
        with open(partial, "w", encoding="utf-8") as f:
            _write_scores(rows, form, unit, f.write)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def _write_scores(rows: Any, form: str, unit: str, write: Callable[[str], Any]) -> None:
    """TSV with a header row, or JSON lines; log_prob in nats, surprisal and entropy in bits."""
    if form == "tsv":
        write(f"line\t{unit}\tlog_prob\tsurprisal_bits\tentropy_bits\ttokens\n")
    for row in rows:
        if form == "tsv":
            shown = row.text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            write(f"{row.line}\t{shown}\t{row.log_prob:.6f}\t{row.surprisal:.6f}\t{row.entropy:.6f}\t{row.tokens}\n")
        else:
            write(
                json.dumps(
                    {
                        "line": row.line,
                        unit: row.text,
                        "log_prob": row.log_prob,
                        "surprisal_bits": row.surprisal,
                        "entropy_bits": row.entropy,
                        "tokens": row.tokens,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )


from rnnlm import cli_embeddings, cli_inspect, cli_synth  # noqa: E402  (the commands in their own modules)

cli.add_command(cli_embeddings.export_embeddings)
cli.add_command(cli_inspect.inspect)
cli.add_command(cli_synth.synth)


def main() -> None:
    global _standalone
    _standalone = True
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        cli(prog_name="rnnlm")
    except SystemExit as exc:
        if exc.code in (STOPPED_BY_SIGINT, STOPPED_BY_SIGTERM):
            # the run is saved and closed: skip the interpreter's teardown (seconds with torch loaded),
            # during which Python restores the default signal handlers and a second Ctrl-C kills it (-2)
            _flush_and_exit(exc.code)
        raise
