"""Looking inside a model on a text (`rnnlm inspect`): every layer's gates, cell and hidden state per token,
gate saturation, the units that hold memory longest, the units that track simple properties of the text, and
the gradient-flow curve (rnnlm/gradflow.py). Everything goes through the model contract's one-step function
with `record`, so fused and reference cells are looked into alike. The HTML page is rnnlm/report.py's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from rnnlm.data.corpus import Segment, iter_text
from rnnlm.data.tokenizers import Tokenizer
from rnnlm.errors import DataError, UsageError
from rnnlm.gradflow import GradientFlow, gradient_flow, vanishing_lag
from rnnlm.models import LanguageModel, State
from rnnlm.models.cells import Gates
from rnnlm.sample import fresh_state
from rnnlm.surprisal import text_ids

# what the page offers per cell (LSTM: gates i, f, o, cell c, hidden h; GRU: gates z, r, hidden h)
QUANTITIES = {"lstm": ("i", "f", "o", "c", "h"), "gru": ("z", "r", "h"), "rnn": ("h",)}
GATES = {"lstm": ("i", "f", "o"), "gru": ("z", "r"), "rnn": ()}
# the gate whose value near 1 keeps the old state: c_t = f c_{t-1} + i c~_t; h_t = z h_{t-1} + (1 - z) h~_t
KEEP = {"lstm": "f", "gru": "z"}
MEMORY_MEASURE = {"lstm": "forget gate f", "gru": "update gate z", "rnn": "lag-1 autocorrelation of h"}
LOW, HIGH = 0.1, 0.9  # a gate value below LOW is "left-saturated", above HIGH "right-saturated"
BLOCK = 512  # tokens recorded between two copies into the arrays
MIN_TOKENS = 2  # the gradient flow needs a target after a lag of 1 (the line end read first counts too)


class RecordingStepper(Protocol):
    def __call__(
        self, tokens: torch.Tensor, state: State, record: list[Gates] | None = None
    ) -> tuple[torch.Tensor, State]: ...


@dataclass
class Trace:
    """What the cells did on a text: per layer, per quantity, the values (N, H) after each token (float16, to
    keep a long text's trace small), and what was summed exactly (float32/64) while they were recorded."""

    cell: str
    values: list[dict[str, np.ndarray]]
    counts: list[dict[str, np.ndarray]] = field(default_factory=list)  # per layer, per gate: [below, above, total]
    log_keep: list[np.ndarray] = field(default_factory=list)  # per layer (H,): sum over tokens of ln(keep gate)

    @property
    def length(self) -> int:
        return len(self.values[0]["h"])


@dataclass(frozen=True)
class MemoryUnit:
    layer: int
    unit: int
    score: float  # the mean keep gate (LSTM f, GRU z), or h's lag-1 autocorrelation (RNN)
    half_life: float  # tokens until the kept share of the state falls to 1/2 (inf: the gate never closes)


@dataclass(frozen=True)
class Tracker:
    layer: int
    quantity: str
    unit: int
    correlation: float  # Pearson's r between the unit's value and the property, over the tokens


def saturation_counts(gate: np.ndarray) -> np.ndarray:
    """[values below LOW, values above HIGH, all values] of one gate's values, any shape."""
    return np.array([(gate < LOW).sum(), (gate > HIGH).sum(), gate.size], dtype=np.int64)


def saturation(trace: Trace) -> list[dict[str, dict[str, float]]]:
    """Per layer, per gate: the share of its values below 0.1 ("low") and above 0.9 ("high")."""
    return [
        {gate: {"low": float(c[0] / c[2]), "high": float(c[1] / c[2])} for gate, c in layer.items()}
        for layer in trace.counts
    ]


def record(model: LanguageModel, ids: np.ndarray, state: State, cell: str) -> Trace:
    """Read `ids` (N,) one token at a time through the model's stepper from `state`, keeping every layer's
    gates, cell and hidden state after each token."""
    step: RecordingStepper = model.stepper()  # type: ignore[assignment]  # the stepper takes `record`
    sizes, names, n = model.state_layout.sizes, QUANTITIES[cell], len(ids)
    trace = Trace(cell, [{q: np.empty((n, size), np.float16) for q in names} for size in sizes])
    trace.counts = [{g: np.zeros(3, np.int64) for g in GATES[cell]} for _ in sizes]
    trace.log_keep = [np.zeros(size, np.float64) for size in sizes]
    tokens = torch.as_tensor(ids, dtype=torch.long, device=model.device)
    pending: list[list[Gates]] = []
    with torch.inference_mode():
        for t in range(n):
            recorded: list[Gates] = []
            _, state = step(tokens[t : t + 1], state, recorded)
            pending.append(recorded)
            if len(pending) == BLOCK or t == n - 1:
                _keep(trace, pending, t + 1 - len(pending))
                pending = []
    return trace


def _keep(trace: Trace, block: list[list[Gates]], start: int) -> None:
    """Copy a block of recorded steps into the trace's arrays, summing the exact statistics on the way."""
    for k, layer in enumerate(trace.values):
        for name, array in layer.items():
            values = torch.cat([getattr(steps[k], name) for steps in block]).float().cpu().numpy()  # (n, H)
            array[start : start + len(values)] = values
            if name in trace.counts[k]:
                trace.counts[k][name] += saturation_counts(values)
            if name == KEEP.get(trace.cell):
                trace.log_keep[k] += np.log(np.clip(values, 1e-12, None)).sum(0, dtype=np.float64)


def memory_ranking(trace: Trace) -> list[MemoryUnit]:
    """Every unit, the longest memory first. Gated cells: by the mean log of the keep gate (the state kept
    after k tokens is the product of k gates: half of it is left after ln(1/2) / mean ln(gate) tokens).
    The RNN has no gate: by the lag-1 autocorrelation rho of h, a proxy (half-life ln(1/2) / ln rho)."""
    units = []
    for k, layer in enumerate(trace.values):
        if trace.cell in KEEP:
            keep = layer[KEEP[trace.cell]].astype(np.float32)
            means, rates = keep.mean(0), trace.log_keep[k] / trace.length
        else:
            means = lag1_autocorrelation(layer["h"])
            rates = np.log(np.clip(means, 1e-12, None))
        for unit, (mean, rate) in enumerate(zip(means.tolist(), rates.tolist(), strict=True)):
            if math.isfinite(mean):
                half_life = math.log(0.5) / rate if rate < 0 else math.inf
                units.append(MemoryUnit(k, unit, mean, half_life if mean > 0 else 0.0))
    return sorted(units, key=lambda u: (-u.half_life, -u.score, u.layer, u.unit))


def lag1_autocorrelation(values: np.ndarray) -> np.ndarray:
    """Per column of `values` (N, H): the correlation of x_t with x_{t-1} (nan where it is undefined)."""
    x = values.astype(np.float64)
    a, b = x[1:] - x[1:].mean(0), x[:-1] - x[:-1].mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


# ---- properties of the text, read as the model reads it: each token's value after its last character ----

PROPERTIES = ("line_position", "in_quotes", "in_brackets", "bracket_depth", "indentation")
OPENING, CLOSING = "([{", ")]}"


def text_properties(tokens: list[str]) -> dict[str, np.ndarray]:
    """Per token, after reading it: its column in the line (characters before it since the last line end),
    inside double quotes (1/0), inside brackets (1/0), the depth of ( [ { nesting, and the current line's
    indentation so far (leading spaces and tabs)."""
    column = depth = indent = 0
    quoted, leading = False, True
    out = {name: np.zeros(len(tokens), np.float32) for name in PROPERTIES}
    for t, token in enumerate(tokens):
        out["line_position"][t] = column
        for char in token:
            if char == "\n":
                column, indent, leading = 0, 0, True
                continue
            column += 1
            if leading and char in " \t":
                indent += 1
            else:
                leading = False
            quoted ^= char == '"'
            depth += char in OPENING
            depth = max(0, depth - (char in CLOSING))
        out["in_quotes"][t], out["in_brackets"][t] = quoted, depth > 0
        out["bracket_depth"][t], out["indentation"][t] = depth, indent
    return out


def property_ranking(trace: Trace, properties: dict[str, np.ndarray], top: int) -> dict[str, list[Tracker]]:
    """Per property, the `top` units (any layer, any quantity) whose values correlate most with it, by |r|;
    an empty list for a property that never changes in this text."""
    ranked: dict[str, list[Tracker]] = {}
    usable = {name: p for name, p in properties.items() if p.std() > 0}
    standard = {name: (p - p.mean()) / p.std() for name, p in usable.items()}
    found: dict[str, list[Tracker]] = {name: [] for name in usable}
    for layer, quantity, values in _columns(trace):
        x = values.astype(np.float32)  # (N, H)
        spread = x.std(0)
        for name, z in standard.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.where(spread > 0, (z @ x) / len(z) / spread, 0.0)  # z has mean 0: x's mean drops out
            for unit in np.argsort(-np.abs(r))[:top].tolist():
                found[name].append(Tracker(layer, quantity, unit, float(r[unit])))
    for name in properties:
        ranked[name] = sorted(found.get(name, []), key=lambda u: -abs(u.correlation))[:top]
    return ranked


def _columns(trace: Trace) -> Iterator[tuple[int, str, np.ndarray]]:
    for k, layer in enumerate(trace.values):
        for quantity, values in layer.items():
            yield k, quantity, values


# ---- the whole inspection ----


@dataclass
class Inspection:
    cell: str
    sizes: tuple[int, ...]
    tokens: list[str]  # each token's text
    trace: Trace
    saturation: list[dict[str, dict[str, float]]]
    memory: list[MemoryUnit]
    trackers: dict[str, list[Tracker]]
    flow: GradientFlow
    asked_lag: int  # the largest lag asked for; flow.lags ends lower when the text is shorter

    def describe(self) -> str:
        """E.g. "LSTM, 2 layers of 256 units" ("layers of 256, 128 units" when they differ)."""
        sizes = self.sizes
        units = str(sizes[0]) if len(set(sizes)) == 1 else ", ".join(map(str, sizes))
        return f"{self.cell.upper()}, {len(sizes)} layer{'s' * (len(sizes) > 1)} of {units} units"

    def summary(self) -> list[str]:
        """A few lines for the terminal: the model, the gradient flow, the longest memory, the best trackers."""
        flow = self.flow
        lag = vanishing_lag(flow.lags, flow.norms)
        lines = [
            f"{self.describe()}, on {len(self.tokens):,} tokens",
            f"gradient flow, lags 1-{flow.lags[-1]}: "
            + (f"below 1e-3 of its lag-1 value from lag {lag}" if lag else "above 1e-3 of its lag-1 value throughout"),
        ]
        if self.memory:
            m = self.memory[0]
            lines.append(
                f"longest memory: layer {m.layer} unit {m.unit} (mean {MEMORY_MEASURE[self.cell]} {m.score:.3f}, "
                f"half-life {m.half_life:,.1f} tokens)"
            )
        for name, trackers in self.trackers.items():
            if trackers:
                t = trackers[0]
                lines.append(f"{name}: layer {t.layer} {t.quantity} unit {t.unit} (r = {t.correlation:+.3f})")
        return lines

    def to_json(self, top: int) -> dict[str, object]:
        """The numbers behind the page: gradient_flow, saturation, memory (the `top` longest) and properties."""
        return {
            "cell": self.cell,
            "hidden_sizes": list(self.sizes),
            "tokens": len(self.tokens),
            "gradient_flow": self.flow.to_json(),
            "saturation": self.saturation,
            "memory": {
                "measure": MEMORY_MEASURE[self.cell],
                "units": [_plain(u.__dict__) for u in self.memory[:top]],
            },
            "properties": {name: [u.__dict__ for u in units] for name, units in self.trackers.items()},
        }


def _plain(entry: dict[str, object]) -> dict[str, object]:
    """JSON has no Infinity: a half-life that never ends is null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in entry.items()}


def check_model(model: LanguageModel) -> str:
    """The model's cell, or one line on why it cannot be looked into."""
    if model.config.bidirectional:
        raise UsageError(
            "inspect looks into left-to-right models; this checkpoint is bidirectional (model.bidirectional)"
        )
    return model.config.cell


def check_text(tokenizer: Tokenizer, text: str, ids: np.ndarray) -> None:
    """Refuse a text too short to measure, or with characters a character or subword model never saw."""
    if len(ids) < MIN_TOKENS:
        raise DataError(f"the text is {len(ids)} token(s) long; inspect needs at least {MIN_TOKENS}")
    if tokenizer.kind == "word":  # rare words are <unk> in training too: the model knows that token
        return
    unknown = tokenizer.unknown(text)
    if unknown:
        count = sum(text.count(u) for u in unknown)
        shown = ", ".join(map(repr, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
        raise DataError(
            f"the text has {len(unknown)} distinct character(s) the model never saw ({shown}), {count:,} in "
            f"all; remove or replace them"
        )


def read_text(path: Path, tokenizer: Tokenizer) -> tuple[str, np.ndarray]:
    """The text at `path` and its token ids, as `rnnlm score` reads them (DataError: missing, empty, not text)."""
    ids = np.concatenate(list(text_ids(path, tokenizer)))
    return "".join(iter_text(Segment(path, 0, path.stat().st_size))), ids


def inspect_text(
    model: LanguageModel,
    tokenizer: Tokenizer,
    path: Path,
    *,
    max_lag: int = 200,
    top: int = 5,
    positions: int = 32,
) -> Inspection:
    """Look into `model` reading the text at `path` after a line end (from its warm start state, as `eval` starts).

    The gradient flow is measured up to `max_lag`, or the longest lag the text allows (its token count,
    the line end included, minus 2) when that is shorter."""
    cell = check_model(model)
    text, ids = read_text(path, tokenizer)
    check_text(tokenizer, text, ids)
    model.eval()
    boundary = tokenizer.boundary_id
    state = fresh_state(model, [boundary], 1, greedy=True, generator=torch.Generator(), device=model.device, warm=True)
    _, state = model.stepper()(torch.tensor([boundary], device=model.device), state)  # the line end first
    trace = record(model, ids, state, cell)
    decode = tokenizer.stream_decoder()
    tokens = [decode(int(i)) for i in ids]
    stream = torch.as_tensor(np.concatenate([[boundary], ids]), dtype=torch.long)
    flow = gradient_flow(model, stream, max_lag=min(max_lag, len(stream) - 2), positions=positions)
    return Inspection(
        cell,
        tuple(model.state_layout.sizes),
        tokens,
        trace,
        saturation(trace),
        memory_ranking(trace),
        property_ranking(trace, text_properties(tokens), top),
        flow,
        max_lag,
    )
