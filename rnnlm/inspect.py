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

import numpy as np
import torch

from rnnlm.data.corpus import Segment, iter_text
from rnnlm.data.tokenizers import Tokenizer
from rnnlm.errors import DataError, UsageError
from rnnlm.gradflow import GradientFlow, gradient_flow, vanishing_lag
from rnnlm.metrics import Writer
from rnnlm.models import LanguageModel, State
from rnnlm.models.cells import Gates
from rnnlm.properties import Tracker, property_ranking, text_properties
from rnnlm.sample import fresh_state
from rnnlm.surprisal import text_ids

# what the page offers per cell (LSTM: gates i, f, o, cell c, hidden h; GRU: gates z, r, hidden h)
# minGRU: update gate z, candidate n; minLSTM: the normalised gates f' and i' = 1 - f', candidate n
QUANTITIES = {
    "lstm": ("i", "f", "o", "c", "h"),
    "gru": ("z", "r", "h"),
    "rnn": ("h",),
    "mingru": ("z", "n", "h"),
    "minlstm": ("f", "i", "n", "h"),
}
GATES = {"lstm": ("i", "f", "o"), "gru": ("z", "r"), "rnn": (), "mingru": ("z",), "minlstm": ("f", "i")}
# the gate that keeps the old state: c_t = f c_{t-1} + i c~_t; GRU h_t = z h_{t-1} + (1 - z) h~_t;
# minLSTM h_t = f' h_{t-1} + i' h~_t; minGRU h_t = (1 - z) h_{t-1} + z h~_t, so there 1 - z keeps
KEEP = {"lstm": "f", "gru": "z", "minlstm": "f", "mingru": "z"}
KEEP_IS_ONE_MINUS = {"mingru"}
MEMORY_MEASURE = {
    "lstm": "forget gate f",
    "gru": "update gate z",
    "rnn": "lag-1 autocorrelation of h",
    "mingru": "keep gate 1 - z",
    "minlstm": "normalised forget gate f'",
}
LOW, HIGH = 0.1, 0.9  # a gate value below LOW is "left-saturated", above HIGH "right-saturated"
BLOCK = 512  # tokens recorded between two copies into the arrays
MIN_TOKENS = 2  # the gradient flow needs a target after a lag of 1 (the line end read first counts too)


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
    step = model.stepper()  # its `record` list receives each layer's gates
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
                kept = 1 - values if trace.cell in KEEP_IS_ONE_MINUS else values
                trace.log_keep[k] += np.log(np.clip(kept, 1e-12, None)).sum(0, dtype=np.float64)


def columns(trace: Trace) -> Iterator[tuple[int, str, np.ndarray]]:
    """(layer, quantity, values (N, H)) for every recorded array."""
    for k, layer in enumerate(trace.values):
        for quantity, values in layer.items():
            yield k, quantity, values


def memory_ranking(trace: Trace) -> list[MemoryUnit]:
    """Every unit, the longest memory first. Gated cells: by the mean log of the keep gate (the state kept
    after k tokens is the product of k gates: half of it is left after ln(1/2) / mean ln(gate) tokens).
    The RNN has no gate: by the lag-1 autocorrelation rho of h, a proxy (half-life ln(1/2) / ln rho)."""
    units = []
    for k, layer in enumerate(trace.values):
        if trace.cell in KEEP:
            keep = layer[KEEP[trace.cell]].astype(np.float32)
            if trace.cell in KEEP_IS_ONE_MINUS:
                keep = 1 - keep
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
        property_ranking(columns(trace), text_properties(tokens), top),
        flow,
        max_lag,
    )


# ---- at every validation, when TensorBoard is on ----

LOGGED_LAGS = (1, 10, 50, 100)
LOGGED_TOKENS = 400  # the slice of validation data looked into: the start of the split


def log_inside(writer: Writer, model: LanguageModel, ids: np.ndarray, step: int) -> None:
    """TensorBoard scalars for what the model does inside, on the first LOGGED_TOKENS tokens of `ids`: the
    gradient flow at a few lags (`gradflow/lag_K`, clipped to the slice) and each layer's gate saturation
    (`saturation/layerK_GATE_low`, `..._high`). Training goes on as if it had not run: nothing is drawn at
    random, the model is put back in its mode, no parameter's `.grad` changes (gradient_flow and the
    stepper read the weights only)."""
    ids = np.asarray(ids[:LOGGED_TOKENS], dtype=np.int64)
    lags = [lag for lag in LOGGED_LAGS if lag <= len(ids) - 2]
    if not lags:
        return
    flow = gradient_flow(model, torch.from_numpy(ids), max_lag=lags[-1], positions=8, warmup=20)
    for lag in lags:
        writer.add_scalar(f"gradflow/lag_{lag}", flow.norms[lag - 1], step)
    trace = record(model, ids[: LOGGED_TOKENS // 2], model.init_state(1), model.config.cell)
    for k, layer in enumerate(saturation(trace)):
        for gate, shares in layer.items():
            writer.add_scalar(f"saturation/layer{k}_{gate}_low", shares["low"], step)
            writer.add_scalar(f"saturation/layer{k}_{gate}_high", shares["high"], step)
