"""Run configuration: frozen dataclasses, YAML loading, `key=value` overrides and validation.

Precedence is dataclass default < YAML file < `key=value` override. Every problem found is
reported at once, in one ConfigError. What a resumed run may change, and how an old checkpoint's
config is read, is rnnlm/resume.py's.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rnnlm.errors import ConfigError, storage_error

# torch's own range (a signed or an unsigned 64-bit integer): what runs before the check was added trained with
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "tinyshakespeare"  # a text file, a folder with train/valid/test.txt, or a registry name
    valid_fraction: float = 0.05  # single-file corpora: share of bytes for validation (cut at a line end)
    test_fraction: float = 0.05
    cache_dir: str = ""  # "" means $RNNLM_CACHE, else ~/.cache/rnnlm


@dataclass(frozen=True)
class TokenizerConfig:
    kind: Literal["char", "word", "bpe", "unigram"] = "char"
    # word: keep the most frequent words, specials included (0: no cap). bpe, unigram: the size of the
    # sentencepiece vocabulary (0: 4000, or the largest the training text supports when that is smaller)
    vocab_size: int = 0
    min_count: int = 1  # word: drop words seen fewer times in the training split
    character_coverage: float = 0.9995  # bpe, unigram: share of characters with their own token; the rest are bytes
    sample_bytes: int = 16_000_000  # bpe, unigram: train on about this much of the training split (0: all of it)


@dataclass(frozen=True)
class ModelConfig:
    cell: Literal["rnn", "gru", "lstm", "mingru", "minlstm"] = "lstm"  # min*: parallel-scan cells (Feng et al. 2024)
    nonlinearity: Literal["tanh", "relu", "sigmoid"] = "tanh"  # rnn only; sigmoid needs impl: reference
    impl: Literal["fused", "reference"] = "fused"  # torch's fused kernels, or the readable cells of models/cells.py
    # mingru, minlstm: the candidate h~ = g(W x) > 0 of the paper's log-space version, or W x of its
    # vanilla version (models/mincells.py)
    min_activation: Literal["g", "identity"] = "g"
    # mingru, minlstm: the paper's layout around each layer, as a transformer's around attention
    # (models/mincells.py): the layer's output added to its input (needs embed_size == hidden_size) ...
    min_residual: bool = False
    min_norm: bool = False  # ... LayerNorm on what each layer (and MLP) reads, and on the stack's output ...
    min_mlp: int = 0  # ... and a GELU MLP after each layer, this many times hidden_size wide (0: none)
    bidirectional: bool = False  # forward and backward stacks plus an infill head (Peters et al. 2018)
    num_layers: int = 2
    embed_size: int = 128
    hidden_size: int = 128
    output_size: int | None = None  # hidden size of the top layer (null: hidden_size), as AWD-LSTM's 400
    dropout: float = 0.0  # on the embedding output, between layers and on the top layer's output
    dropout_input: float | None = None  # on the embedding output (null: model.dropout)
    dropout_between: float | None = None  # between recurrent layers (null: model.dropout)
    dropout_output: float | None = None  # on the top layer's output (null: model.dropout)
    dropout_embedding: float = 0.0  # drop whole word types from the embedding (Gal & Ghahramani 2016)
    locked_dropout: bool = False  # one dropout mask per sequence, shared over time (Gal & Ghahramani 2016)
    weight_drop: float = 0.0  # DropConnect on hidden-to-hidden weights (Merity et al. 2017)
    activation_reg: float = 0.0  # AR: weight of mean(h_t^2) on the dropped top-layer output (Merity et al. 2017)
    temporal_reg: float = 0.0  # TAR: weight of mean((h_t - h_{t-1})^2) on the top-layer output
    tie_weights: bool = False  # decoder shares the embedding matrix (Press & Wolf 2017)
    forget_bias: float = 1.0  # lstm only (Jozefowicz et al. 2015)
    init: Literal["default", "uniform"] = "default"  # uniform: every weight ~ U(-init_range, init_range)
    init_range: float = 0.1  # embedding and decoder always; recurrent weights too with init=uniform
    # a GloVe or word2vec text file: a fresh word model's embedding rows start from its vectors ("": none)
    init_embeddings: str = ""
    # full: one softmax over the vocabulary. adaptive: a frequent-word head plus smaller clusters for rarer
    # words (Grave et al. 2017), for word vocabularies of tens of thousands; needs tokenizer.kind word
    softmax: Literal["full", "adaptive"] = "full"
    # adaptive: ids where each tail cluster starts, increasing ([]: 2000, 10000, 50000, those below the vocabulary)
    cutoffs: tuple[int, ...] = ()
    # full softmax: score this many rows (time steps x streams) of logits at a time, in training and
    # evaluation, so the (bptt * batch, vocab) logits never exist whole (0: all at once)
    loss_chunk: int = 0
    # full softmax of a unidirectional model, training on a CPU in fp32 or bf16, with loss_chunk 0: logits,
    # softmax and gradient in one buffer kept between steps, not four fresh (bptt * batch, vocab) tensors
    # (false: torch's cross_entropy)
    fused_loss: bool = True
    adaptive_div: float = 4.0  # adaptive: tail cluster k projects the hidden state to hidden / adaptive_div^k
    # adaptive: scale the gradient of the head's cluster entries by this (1: unscaled). Each carries a whole
    # cluster's probability, and SGD at a rate tuned for the full softmax overshoots it; with SGD the entries
    # then learn at this fraction of the rate (Adam sizes each weight's step itself: nearly no effect)
    adaptive_cluster_grad: float = 0.1

    def dropouts(self) -> tuple[float, float, float]:
        """Dropout on the input, between layers and on the output, model.dropout filling the unset ones."""
        return tuple(
            self.dropout if p is None else p  # type: ignore[return-value]
            for p in (self.dropout_input, self.dropout_between, self.dropout_output)
        )


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 20
    bptt: int = 35
    epochs: int = 1
    max_steps: int = 0  # stop after this many optimizer steps (0: run all epochs)
    # stop after this much wall-clock time, counted as README says: 90s, 10m, 1h, 1h30m ("" or 0: no limit);
    # with optim.schedule cosine the rate then decays over the time, not the steps
    max_time: str = ""
    eval_every: int = 0  # validate every N steps (0: at the end of each epoch only)
    eval_batch_size: int = 10
    # mean: gradient of the mean loss per token. sum_over_time: of the batch-mean loss summed over the
    # window's time steps, as Zaremba et al. 2014's code does (same model, bptt x larger gradients)
    loss_reduction: Literal["mean", "sum_over_time"] = "mean"
    variable_bptt: bool = False  # window length ~ N(bptt, 5), bptt/2 with p 0.05, lr scaled (Merity et al. 2017)
    # forward pass under autocast: bf16 (CPU with AVX-512 bf16, or GPU) or fp16 (GPU; adds loss scaling);
    # weights, optimizer and the loss stay fp32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    skip_nonfinite: int = 0  # skip up to N consecutive steps with a non-finite loss (0: stop at the first)
    dist_timeout: int = 600  # under torchrun: seconds a collective may wait before the run fails
    log_every: int = 20  # steps between progress-bar and TensorBoard updates
    seed: int = 1234
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    num_threads: int = 0  # CPU threads for torch (0: torch's default)
    tensorboard: bool = True


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "ntasgd"] = "sgd"  # ntasgd: SGD, then weight averaging (Merity et al.)
    lr: float = 20.0
    momentum: float = 0.0  # sgd only
    weight_decay: float = 0.0
    clip: float = 0.25  # max gradient norm (0: no clipping)
    schedule: Literal["plateau", "step", "cosine", "constant"] = "plateau"
    lr_decay: float = 0.25  # plateau: factor when validation loss does not improve; step: per epoch
    decay_start: int = 0  # step: the last epoch (1-based) run at the initial learning rate
    warmup_steps: int = 0  # cosine: steps of linear warmup from 0 to lr
    min_lr: float = 0.0  # cosine: the rate at the last step
    nonmono: int = 5  # ntasgd: average once validation is worse than the best more than this many checks ago


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain values, sequences as lists, as YAML and `rnnlm config` show them."""
        return {
            section: {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}
            for section, values in dataclasses.asdict(self).items()
        }

    def replace(self, changes: dict[str, Any]) -> Config:
        """A copy with `section.key` values replaced, validated like the original."""
        values = self.to_dict()
        for key, value in changes.items():
            section, _, name = key.partition(".")
            values.setdefault(section, {})[name] = value
        return build_config(values)


SECTIONS: dict[str, type] = typing.get_type_hints(Config)


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from defaults, an optional YAML file and `key=value` overrides."""
    base = Config().to_dict()
    problems: list[str] = []
    if path is not None:
        _merge(base, read_yaml(path), problems)
    return build_config(base, overrides, problems)


def build_config(
    values: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), problems: list[str] | None = None
) -> Config:
    """Validate a nested dict plus overrides into a Config, raising one error for all problems."""
    problems = [] if problems is None else problems
    merged = {s: dict(v) for s, v in Config().to_dict().items()}
    _merge(merged, values, problems)
    _merge(merged, parse_overrides(overrides, problems), problems)
    sections, bad_keys = {}, set()
    for name, cls in SECTIONS.items():
        kwargs = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value, error = _coerce(merged[name][f.name], hints[f.name])
            if error:  # keep checking the rest with the default in its place
                problems.append(f"{name}.{f.name} {error}")
                bad_keys.add(f"{name}.{f.name}")
                value = f.default
            kwargs[f.name] = value
        sections[name] = cls(**kwargs)
    config = Config(**sections)
    problems.extend(p for p in _check_ranges(config) if p.split(" ", 1)[0] not in bad_keys)
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    return config


def parse_overrides(overrides: list[str] | tuple[str, ...], problems: list[str]) -> dict[str, dict[str, Any]]:
    """Turn `section.key=value` strings into a nested dict; values are read as YAML scalars."""
    nested: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            problems.append(f"override {item!r} is not of the form section.key=value")
            continue
        section, _, name = key.strip().partition(".")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        nested.setdefault(section, {})[name] = value
    return nested


def flatten(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`{"train": {"seed": 1}}` -> `{"train.seed": 1}`."""
    return {f"{s}.{k}": v for s, values in nested.items() for k, v in values.items()}


def dump_yaml(config: Config, path: str | Path) -> None:
    """Write the resolved config atomically: a full disk leaves the old file, never an empty one."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise storage_error(exc, path) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: silently keeping the last
    would train with a value the reader of the file may not see."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` overrides by design
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen[key].line + 1})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a dict of sections, or one ConfigError saying what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (data, model, ...)")
    return data


def _merge(target: dict[str, dict[str, Any]], source: dict[str, Any], problems: list[str]) -> None:
    for section, values in source.items():
        if section not in SECTIONS:
            problems.append(f"unknown section {section!r}{_suggest(str(section), list(SECTIONS))}")
            continue
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append(f"section {section!r} must be a mapping of keys to values")
            continue
        for key, value in values.items():
            if key not in target[section]:
                dotted = f"{section}.{key}"
                problems.append(f"unknown key {dotted!r}{_suggest(dotted, all_keys())}")
                continue
            target[section][key] = value


def _suggest(name: str, candidates: list[str]) -> str:
    tail = name.rpartition(".")[2]
    by_tail = [c for c in candidates if c.rpartition(".")[2] == tail]
    close = by_tail or difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:
        close = [c for c in candidates if difflib.get_close_matches(tail, [c.rpartition(".")[2]], cutoff=0.75)]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, hint: Any) -> tuple[Any, str | None]:
    """Check one value against its field type; YAML and override strings are converted where safe."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # `X | None`: null is allowed
        if value is None:
            return None, None
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        value, error = _coerce(value, inner)
        return value, (error.replace("must be", "must be null or") if error else None)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value, None
        return None, f"must be one of {', '.join(map(str, choices))} (got {value!r})"
    if origin is tuple:  # `tuple[int, ...]`: a YAML list, or [a, b] as an override
        (inner, _) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            return None, f"must be a list (got {value!r})"
        items = [_coerce(item, inner) for item in value]
        if any(error for _, error in items):
            return None, f"must be a list of {inner.__name__}s (got {value!r})"
        return tuple(item for item, _ in items), None
    if hint is bool:
        if isinstance(value, bool):
            return value, None
        return None, f"must be true or false (got {value!r})"
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        return None, f"must be an integer (got {value!r})"
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        if isinstance(value, str):
            try:
                return float(value), None
            except ValueError:
                pass
        return None, f"must be a number (got {value!r})"
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value), None
        return None, f"must be a string (got {value!r})"
    raise TypeError(f"unsupported config type {hint!r}")


_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d*)?)h)?(?:(?P<m>\d+(?:\.\d*)?)m)?(?:(?P<s>\d+(?:\.\d*)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `90s`, `10m`, `1h`, `1.5h` or `1h30m` (hours, minutes, seconds in that
    order); "" and "0" mean no limit (0.0). A ValueError says what is wrong."""
    text = text.strip().lower().replace(" ", "")
    if text in ("", "0"):
        return 0.0
    match = _DURATION.fullmatch(text)
    if text.startswith("-"):
        raise ValueError(f"must not be negative (got {text!r}; 0 or empty: no limit)")
    if not match or not any(match.groupdict().values()):
        raise ValueError(
            f"must be a number with its unit, h, m or s, such as 90s, 10m, 1h or 1h30m (got {text!r}; "
            f"0 or empty: no limit)"
        )
    parts = match.groupdict()
    return sum(float(parts[unit] or 0) * scale for unit, scale in (("h", 3600), ("m", 60), ("s", 1)))


def _check_ranges(c: Config) -> list[str]:
    problems = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    d, t, m, tr, o = c.data, c.tokenizer, c.model, c.train, c.optim
    for key, value in (("data.valid_fraction", d.valid_fraction), ("data.test_fraction", d.test_fraction)):
        need(0.0 <= value < 1.0, f"{key} must be in [0, 1) (got {value})")
    need(
        d.valid_fraction + d.test_fraction < 1.0,
        f"data.valid_fraction + data.test_fraction must be below 1 (got {d.valid_fraction + d.test_fraction})",
    )
    need(d.corpus.strip() != "", "data.corpus must name a file, a folder or a registry corpus")
    need(t.vocab_size == 0 or t.vocab_size >= 3, f"tokenizer.vocab_size must be 0 or at least 3 (got {t.vocab_size})")
    need(t.min_count >= 1, f"tokenizer.min_count must be at least 1 (got {t.min_count})")
    need(
        0.0 < t.character_coverage <= 1.0,
        f"tokenizer.character_coverage must be in (0, 1] (got {t.character_coverage})",
    )
    need(t.sample_bytes >= 0, f"tokenizer.sample_bytes must be 0 (all) or positive (got {t.sample_bytes})")
    for key in ("num_layers", "embed_size", "hidden_size"):
        need(getattr(m, key) >= 1, f"model.{key} must be at least 1 (got {getattr(m, key)})")
    for key in ("dropout", "dropout_input", "dropout_between", "dropout_output", "dropout_embedding", "weight_drop"):
        value = getattr(m, key)
        need(value is None or 0.0 <= value < 1.0, f"model.{key} must be in [0, 1) (got {value})")
    for key in ("activation_reg", "temporal_reg"):
        need(getattr(m, key) >= 0, f"model.{key} must be 0 or positive (got {getattr(m, key)})")
    top = m.output_size or m.hidden_size
    need(
        not m.tie_weights or m.embed_size == top,
        f"model.tie_weights needs model.embed_size == model.{'output_size' if m.output_size else 'hidden_size'} "
        f"(got {m.embed_size} and {top})",
    )
    need(
        not m.init_embeddings or t.kind == "word",
        f"model.init_embeddings needs tokenizer.kind word (got {t.kind}): word vectors are whole words",
    )
    need(m.output_size is None or m.output_size >= 1, f"model.output_size must be at least 1 (got {m.output_size})")
    need(
        not (m.nonlinearity == "sigmoid" and m.impl == "fused" and m.cell == "rnn"),
        "model.nonlinearity sigmoid needs model.impl: reference (torch's fused nn.RNN offers tanh and relu only)",
    )
    need(
        m.cell not in ("mingru", "minlstm") or m.weight_drop == 0,
        f"model.weight_drop drops recurrent weights, which model.cell {m.cell} does not have: set it to 0",
    )
    layout = [key for key in ("min_residual", "min_norm", "min_mlp") if getattr(m, key)]
    need(
        not layout or m.cell in ("mingru", "minlstm"),
        f"model.{', model.'.join(layout)} applies to model.cell mingru or minlstm (got {m.cell})",
    )
    need(m.min_mlp >= 0, f"model.min_mlp must be 0 (none) or more (got {m.min_mlp})")
    need(
        not m.min_residual or m.embed_size == m.hidden_size == (m.output_size or m.hidden_size),
        f"model.min_residual adds each layer's input to its output: it needs model.embed_size == "
        f"model.hidden_size{' == model.output_size' if m.output_size else ''} "
        f"(got {m.embed_size}, {m.hidden_size}{f', {m.output_size}' if m.output_size else ''})",
    )
    need(m.init_range > 0 and math.isfinite(m.init_range), f"model.init_range must be positive (got {m.init_range})")
    need(math.isfinite(m.forget_bias), f"model.forget_bias must be finite (got {m.forget_bias})")
    problems.extend(_check_output_layer(c))
    for key in ("batch_size", "bptt", "eval_batch_size", "log_every", "dist_timeout"):
        need(getattr(tr, key) >= 1, f"train.{key} must be at least 1 (got {getattr(tr, key)})")
    for key in ("epochs", "max_steps", "eval_every", "num_threads"):
        need(getattr(tr, key) >= 0, f"train.{key} must be 0 or more (got {getattr(tr, key)})")
    try:
        budget = parse_duration(tr.max_time)
    except ValueError as exc:
        problems.append(f"train.max_time {exc}")
        budget = 0.0
    need(
        tr.epochs > 0 or tr.max_steps > 0 or budget > 0,
        "train.epochs, train.max_steps and train.max_time cannot all be 0",
    )
    need(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be positive (got {o.lr})")
    need(o.clip >= 0, f"optim.clip must be 0 (off) or positive (got {o.clip})")
    need(o.weight_decay >= 0, f"optim.weight_decay must be 0 or positive (got {o.weight_decay})")
    need(0.0 <= o.momentum < 1.0, f"optim.momentum must be in [0, 1) (got {o.momentum})")
    need(
        o.name in ("sgd", "ntasgd") or o.momentum == 0.0,
        f"optim.momentum applies to sgd and ntasgd only (optimizer is {o.name})",
    )
    need(o.warmup_steps >= 0, f"optim.warmup_steps must be 0 or more (got {o.warmup_steps})")
    need(0 <= o.min_lr <= o.lr, f"optim.min_lr must be in [0, optim.lr] (got {o.min_lr})")
    need(o.nonmono >= 1, f"optim.nonmono must be at least 1 (got {o.nonmono})")
    need(MIN_SEED <= tr.seed <= MAX_SEED, f"train.seed must be in [-2**63, 2**64 - 1] (got {tr.seed})")
    need(tr.skip_nonfinite >= 0, f"train.skip_nonfinite must be 0 or more (got {tr.skip_nonfinite})")
    need(0.0 < o.lr_decay <= 1.0, f"optim.lr_decay must be in (0, 1] (got {o.lr_decay})")
    need(o.decay_start >= 0, f"optim.decay_start must be 0 or more (got {o.decay_start})")
    return problems


def _check_output_layer(c: Config) -> list[str]:
    """model.loss_chunk and model.softmax adaptive: the settings they cannot work with. Cutoffs past the
    vocabulary are caught here when tokenizer.vocab_size caps it, else when the model is built."""
    m, t = c.model, c.tokenizer
    problems = []
    if any(b <= a for a, b in itertools.pairwise(m.cutoffs)) or any(cut < 1 for cut in m.cutoffs):
        problems.append(f"model.cutoffs must be positive and increasing (got {list(m.cutoffs)})")
    elif m.softmax == "adaptive" and t.vocab_size and m.cutoffs and m.cutoffs[-1] >= t.vocab_size:
        problems.append(f"model.cutoffs must be below tokenizer.vocab_size {t.vocab_size} (got {list(m.cutoffs)})")
    if not (m.adaptive_div >= 1.0 and math.isfinite(m.adaptive_div)):
        problems.append(f"model.adaptive_div must be at least 1 (got {m.adaptive_div})")
    if not 0.0 < m.adaptive_cluster_grad <= 1.0:
        problems.append(f"model.adaptive_cluster_grad must be above 0 and at most 1 (got {m.adaptive_cluster_grad})")
    if m.loss_chunk < 0:
        problems.append(f"model.loss_chunk must be 0 or more (got {m.loss_chunk})")
    if m.loss_chunk and (m.softmax == "adaptive" or m.bidirectional):
        problems.append(
            "model.loss_chunk applies to the full softmax of a unidirectional model: set it to 0 "
            "with model.softmax adaptive or model.bidirectional"
        )
    if m.softmax != "adaptive":
        return problems
    if t.kind != "word":  # the head must hold the frequent words: only word ids are sorted by frequency
        problems.append(
            f"model.softmax adaptive needs tokenizer.kind word, whose ids are sorted by frequency (got {t.kind})"
        )
    if m.tie_weights:
        problems.append(
            "model.softmax adaptive cannot be combined with model.tie_weights (its output layer is "
            "not one matrix the embedding could share)"
        )
    if m.bidirectional:
        problems.append(
            "model.softmax adaptive is not available with model.bidirectional (its heads use a full softmax)"
        )
    return problems
