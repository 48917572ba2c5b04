"""`rnnlm eval`'s methods past the trained model, from a checkpoint: the neural cache (rnnlm/cache.py), dynamic
evaluation (rnnlm/dynamic.py) or both, with the settings asked for or chosen by `tune` on the start of the
validation split; and the gradient statistics that RMS dynamic evaluation reads from the training split.

The text is scored as one stream (rnnlm/stream.py): every token once, with its whole left context.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rnnlm.cache import CacheSettings
from rnnlm.dynamic import DynamicSettings, check_weights, gradient_statistics
from rnnlm.errors import DataError, UsageError
from rnnlm.evaluate import EvalResult
from rnnlm.stream import WINDOW, evaluate_stream

if TYPE_CHECKING:
    from rnnlm.checkpoint import Loaded
    from rnnlm.data.corpus import Split
    from rnnlm.evaluate import CheckpointScore

# `tune`'s grids: the cache's, all 16 points (ptb-small's best, theta 0.6-1 and lambda 0.2, lies inside); the
# learning rates', walked from the default (DEFAULT_LR) towards lower loss, as the best rate depends on how the
# model was trained: sgd 1-3 for ptb-small (trained by SGD at lr 1), below 0.3 for a character model trained by Adam
THETAS = (0.1, 0.3, 0.6, 1.0)
LAMBDAS = (0.05, 0.1, 0.2, 0.3)
LEARNING_RATES = {"sgd": (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0), "rms": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)}
DEFAULT_LR = {"sgd": 1.0, "rms": 1e-4}
TUNE_TOKENS = 20_000  # validation tokens `tune` scores per grid point
STATISTICS_TOKENS = 50_000  # training tokens RMS's mean squared gradients are read from
Log = Callable[[str], None]


@dataclass(frozen=True)
class Methods:
    """What scores the text besides the trained model: the cache, dynamic evaluation, both, or neither."""

    cache: CacheSettings | None = None
    dynamic: DynamicSettings | None = None

    @property
    def name(self) -> str:
        """static, cache, dynamic or cache+dynamic."""
        return "+".join(["cache"] * (self.cache is not None) + ["dynamic"] * (self.dynamic is not None)) or "static"

    def to_dict(self) -> dict[str, Any]:
        cache, dynamic = self.cache, self.dynamic
        return {
            "method": self.name,
            "cache": None
            if cache is None
            else {"size": cache.size, "theta": cache.theta, "lambda": cache.interpolation},
            "dynamic": None
            if dynamic is None
            else {"method": dynamic.method, "lr": dynamic.lr, "decay": dynamic.decay, "segment": dynamic.segment},
        }

    def describe(self) -> str:
        parts = (
            []
            if self.cache is None
            else [f"cache (size {self.cache.size}, theta {self.cache.theta:g}, lambda {self.cache.interpolation:g})"]
        )
        if self.dynamic is not None:
            d = self.dynamic
            parts.append(f"dynamic evaluation ({d.method}, lr {d.lr:g}, decay {d.decay:g}, segment {d.segment})")
        return " + ".join(parts) or "static (the trained model alone)"


@dataclass(frozen=True)
class Tuned:
    """What `tune` chose, on what, in how long, and every grid point's validation loss (nats per token)."""

    methods: Methods
    source: str
    tokens: int
    seconds: float
    losses: tuple[tuple[Methods, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 1),
            "points": len(self.losses),
        }

    def describe(self) -> str:
        chosen = self.methods
        picked = (
            [f"theta {chosen.cache.theta:g}", f"lambda {chosen.cache.interpolation:g}"] if chosen.cache else []
        ) + ([f"lr {chosen.dynamic.lr:g}"] if chosen.dynamic else [])
        return (
            f"tuned on the first {self.tokens:,} tokens of {self.source} ({len(self.losses)} settings, "
            f"{self.seconds:.0f} s): {', '.join(picked)}"
        )


def plan_methods(
    *,
    cache: bool,
    dynamic: bool,
    given: set[str],
    values: dict[str, Any],
    tune: bool,
    reported_split: str | None,
    batch_size: int,
    precision: str,
) -> Methods:
    """The settings of `rnnlm eval`'s options, checked together; `given` names the options the user set,
    `values` holds every option's value (the defaults too). UsageError (one line) for what does not fit."""
    _refuse_what_does_not_fit(
        cache=cache,
        dynamic=dynamic,
        given=given,
        tune=tune,
        tune_tokens=values["tune_tokens"],
        reported_split=reported_split,
        batch_size=batch_size,
        precision=precision,
    )
    settings = Methods()
    if cache:
        settings = replace(
            settings, cache=CacheSettings(values["cache_size"], values["cache_theta"], values["cache_lambda"])
        )
    if dynamic:
        method = values["dynamic_method"]
        lr = values["dynamic_lr"] if values["dynamic_lr"] is not None else DEFAULT_LR[method]
        settings = replace(
            settings, dynamic=DynamicSettings(method, lr, values["dynamic_decay"], values["dynamic_segment"])
        )
    return settings


def _refuse_what_does_not_fit(
    *,
    cache: bool,
    dynamic: bool,
    given: set[str],
    tune: bool,
    tune_tokens: int,
    reported_split: str | None,
    batch_size: int,
    precision: str,
) -> None:
    for prefix, used in (("cache", cache), ("dynamic", dynamic), ("tune", tune)):
        stray = sorted(name for name in given if name.startswith(f"{prefix}_"))
        if stray and not used:
            raise UsageError(f"--{stray[0].replace('_', '-')} applies with --{prefix}")
    if not (cache or dynamic):
        if tune:
            raise UsageError("--tune chooses the settings of --cache and --dynamic: give one of them")
        return
    if batch_size != 1:
        raise UsageError("--cache and --dynamic read the text as one stream: --batch-size must be 1")
    if precision != "fp32":
        raise UsageError(
            f"--cache and --dynamic score in fp32 (a {precision} gradient step rounds away): "
            f"drop --precision {precision}"
        )
    if dynamic and "bptt" in given:
        raise UsageError("--dynamic reads the text in segments of --dynamic-segment tokens: drop --bptt")
    chosen = sorted(given & {"cache_theta", "cache_lambda", "dynamic_lr"})
    if tune and chosen:
        raise UsageError(f"--tune chooses --{chosen[0].replace('_', '-')}: drop it, or drop --tune")
    if tune and reported_split == "valid":
        raise UsageError(
            "--tune tunes on the validation split, and never on the split being reported: "
            "report --split test (or train, or --text FILE)"
        )
    if tune and tune_tokens < 1:
        raise UsageError(f"--tune-tokens must be at least 1, not {tune_tokens}")


def training_statistics(loaded: Loaded, segment: int, *, log: Log | None = None) -> dict[str, torch.Tensor]:
    """RMS dynamic evaluation's mean squared gradients, from `STATISTICS_TOKENS` of the training split of the
    corpus the checkpoint names (DataError, one line, when it cannot be read)."""
    train = _split(loaded, "train", "RMS dynamic evaluation reads its gradient statistics from", log)
    if len(train.ids) < 2 * (segment + 1):
        raise DataError(
            f"the training split of {loaded.config.data.corpus!r} is too short for gradient statistics "
            f"over segments of {segment} tokens"
        )
    return gradient_statistics(loaded.model, train.ids, segment=segment, tokens=STATISTICS_TOKENS)


def validation_start(loaded: Loaded, tokens: int, *, log: Log | None = None) -> Split:
    """The first `tokens` of the validation split of the checkpoint's corpus: what `tune` scores."""
    from rnnlm.data.corpus import Split

    valid = _split(loaded, "valid", "--tune chooses its settings on", log)
    return Split(np.asarray(valid.ids[:tokens]), 0, 0)  # only the loss per token is compared


def tune(
    loaded: Loaded,
    methods: Methods,
    valid: Split,
    *,
    source: str,
    statistics: dict[str, torch.Tensor] | None,
    device: torch.device | str,
    start: str,
    log: Log | None = None,
) -> Tuned:
    """The settings of `methods` with the lowest loss on `valid`: the cache's theta and lambda over THETAS x
    LAMBDAS with the trained model, then, with the cache chosen, dynamic evaluation's learning rate: from
    DEFAULT_LR along LEARNING_RATES, one neighbour at a time, while the loss goes down (a point that diverges
    loses). Keeps the cache size, the method, decay and segment."""
    began = time.perf_counter()
    losses: list[tuple[Methods, float]] = []

    def loss(candidate: Methods) -> float:
        result = score_methods(
            loaded, valid, candidate, statistics=statistics, device=device, start=start, window=WINDOW
        )
        value = result.loss if math.isfinite(result.loss) else math.inf
        losses.append((candidate, value))
        if log is not None:
            log(f"tune: {candidate.describe()}: {value:.4f} nats/token")
        return value

    best = methods
    if methods.cache is not None:
        cache = methods.cache
        grid = [Methods(replace(cache, theta=theta, interpolation=share)) for theta in THETAS for share in LAMBDAS]
        best = replace(methods, cache=min(grid, key=loss).cache)
    if methods.dynamic is not None:
        dynamic, rates = methods.dynamic, LEARNING_RATES[methods.dynamic.method]
        with_cache = best
        lr = downhill(
            rates,
            rates.index(DEFAULT_LR[dynamic.method]),
            lambda lr: loss(replace(with_cache, dynamic=replace(dynamic, lr=lr))),
        )
        best = replace(best, dynamic=replace(dynamic, lr=lr))
    return Tuned(best, source, len(valid.ids), time.perf_counter() - began, tuple(losses))


def downhill(grid: tuple[float, ...], start: int, loss: Callable[[float], float]) -> float:
    """The point of `grid` where a walk from `grid[start]` to the lower of its neighbours, while that is lower
    than where it stands, stops: a local minimum of `loss`, each point evaluated once."""
    seen: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in seen:
            seen[i] = loss(grid[i])
        return seen[i]

    here = start
    while True:
        at(here)
        step = min((i for i in (here - 1, here + 1) if 0 <= i < len(grid)), key=at)
        if at(step) >= at(here):
            return grid[here]
        here = step


@dataclass(frozen=True)
class Adapted:
    """What `rnnlm eval` reports: the numbers, the methods and settings they were measured with, and the tuning."""

    score: CheckpointScore
    methods: Methods
    tuned: Tuned | None


def score_adapted(
    loaded: Loaded,
    scored: Split,
    source: str,
    methods: Methods,
    *,
    tune_tokens: int | None,
    batch_size: int,
    bptt: int,
    device: torch.device | str,
    precision: str,
    start: str,
    log: Log | None = None,
) -> Adapted:
    """Score `scored` with `methods`; with `tune_tokens`, with the settings `tune` chooses on that many tokens of
    the validation split (announced through `log`, as are its grid points and the reading of the corpus)."""
    from rnnlm.evaluate import score_checkpoint

    if methods.dynamic is not None:  # refuse weights it cannot step before any time is spent
        check_weights(loaded.model)
    rms = methods.dynamic is not None and methods.dynamic.method == "rms"
    statistics = training_statistics(loaded, methods.dynamic.segment, log=log) if methods.dynamic and rms else None
    tuned = None
    if tune_tokens is not None:
        valid = validation_start(loaded, tune_tokens, log=log)
        tuned = tune(
            loaded,
            methods,
            valid,
            source=f"{loaded.config.data.corpus} (valid split)",
            statistics=statistics,
            device=device,
            start=start,
            log=log,
        )
        methods = tuned.methods
        if log is not None:
            log(tuned.describe())
    score = score_checkpoint(
        loaded,
        scored,
        source,
        batch_size=batch_size,
        bptt=bptt,
        device=device,
        precision=precision,
        start=start,
        methods=methods,
        statistics=statistics,
    )
    return Adapted(score, methods, tuned)


def score_methods(
    loaded: Loaded,
    scored: Split,
    methods: Methods,
    *,
    statistics: dict[str, torch.Tensor] | None,
    device: torch.device | str,
    start: str,
    window: int,
) -> EvalResult:
    """`scored` as one stream with `methods` (a bidirectional model by its forward stack)."""
    return evaluate_stream(
        loaded.model,
        scored,
        boundary_id=loaded.tokenizer.boundary_id,
        start=start,
        cache=methods.cache,
        dynamic=methods.dynamic,
        statistics=statistics,
        device=device,
        window=window,
    )


def _split(loaded: Loaded, name: str, why: str, log: Log | None) -> Split:
    from rnnlm.data import corpus

    data, called = loaded.config.data, {"train": "training", "valid": "validation"}[name]
    try:
        found = corpus.load_corpus(data, loaded.config.tokenizer, loaded.tokenizer, splits=(name,), log=log).splits.get(
            name
        )
    except DataError as exc:
        raise DataError(f"{why} the {called} split of {data.corpus!r}, which cannot be read: {exc}") from None
    if found is None or len(found.ids) == 0:
        raise DataError(f"{why} the {called} split of {data.corpus!r}, which has none")
    return found
