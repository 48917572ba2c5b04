"""The HTML page of `rnnlm inspect`: one self-contained file (inline CSS, SVG and script, nothing fetched),
readable from file:// without a server. The charts are drawn here as SVG; the page's script colours the
text by the unit the picker (or the URL hash, `#layer=0&q=c&unit=5`) selects (rnnlm/report_page.py).

Per-token values are stored for the units the rankings name (all units of a small model), each column as
bytes (0-255 between its minimum and maximum), base64: about 1.3 bytes per token, unit and quantity.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from rnnlm.errors import storage_error
from rnnlm.gradflow import vanishing_lag
from rnnlm.inspect import GATES, KEEP, MEMORY_MEASURE, QUANTITIES, Inspection
from rnnlm.report_page import PAGE

ALL_UNITS = 64  # a model with at most this many units in all has every unit on the page
PROPERTY_NAMES = {
    "line_position": "position in line",
    "in_quotes": "inside quotes",
    "in_brackets": "inside brackets",
    "bracket_depth": "bracket depth",
    "indentation": "indentation",
}


def stored_units(inspection: Inspection, top: int) -> dict[tuple[int, int], list[str]]:
    """(layer, unit) -> why the page carries its values: the units of both rankings (every unit if few)."""
    units: dict[tuple[int, int], list[str]] = {}
    if sum(inspection.sizes) <= ALL_UNITS:
        units = {(k, u): [] for k, size in enumerate(inspection.sizes) for u in range(size)}
    for rank, memory in enumerate(inspection.memory[:top], start=1):
        units.setdefault((memory.layer, memory.unit), []).append(f"memory #{rank}")
    for name, trackers in inspection.trackers.items():
        for tracker in trackers:
            why = f"{PROPERTY_NAMES[name]} {tracker.quantity} r={tracker.correlation:+.2f}"
            units.setdefault((tracker.layer, tracker.unit), []).append(why)
    return dict(sorted(units.items()))


def quantize(values: np.ndarray) -> list[object]:
    """[low, high, base64 of bytes]: each value as round(255 (v - low) / (high - low))."""
    column = values.astype(np.float32)
    low, high = float(column.min()), float(column.max())
    scaled = np.zeros_like(column) if high == low else (column - low) * (255.0 / (high - low))
    return [round(low, 6), round(high, 6), base64.b64encode(np.rint(scaled).astype(np.uint8).tobytes()).decode()]


def payload(inspection: Inspection, top: int, title: str) -> dict[str, object]:
    """What the page's script reads: the tokens, the stored units' values, the default selection."""
    units = stored_units(inspection, top)
    values: dict[str, dict[str, dict[str, list[object]]]] = {}
    for layer, unit in units:
        columns = {q: quantize(array[:, unit]) for q, array in inspection.trace.values[layer].items()}
        values.setdefault(str(layer), {})[str(unit)] = columns
    return {
        "title": title,
        "cell": inspection.cell,
        "quantities": list(QUANTITIES[inspection.cell]),
        "gates": list(GATES[inspection.cell]),
        "layers": len(inspection.sizes),
        "tokens": inspection.tokens,
        "units": {f"{layer}:{unit}": "; ".join(why) for (layer, unit), why in units.items()},
        "values": values,
        "default": default_selection(inspection),
    }


def default_selection(inspection: Inspection) -> dict[str, object]:
    """The strongest property tracker; else the longest memory; else unit 0 of layer 0's h."""
    trackers = [t for ranked in inspection.trackers.values() for t in ranked]
    if trackers:
        best = max(trackers, key=lambda t: abs(t.correlation))
        return {"layer": best.layer, "q": best.quantity, "unit": best.unit}
    if inspection.memory:
        first = inspection.memory[0]
        return {"layer": first.layer, "q": KEEP.get(inspection.cell, "h"), "unit": first.unit}
    return {"layer": 0, "q": "h", "unit": 0}


def render(inspection: Inspection, top: int, title: str) -> str:
    """The whole page as one string."""
    data = json.dumps(payload(inspection, top, title), ensure_ascii=False, separators=(",", ":"))
    data = data.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    parts = {
        "title": html.escape(title),
        "summary": html.escape(_summary(inspection)),
        "memory_table": memory_table(inspection, top),
        "property_table": property_table(inspection),
        "saturation_chart": saturation_chart(inspection.saturation, inspection.cell),
        "flow_chart": flow_chart(inspection),
        "flow_note": html.escape(_flow_note(inspection)),
        "data": data,
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda match: parts[match.group(1)], PAGE)  # one pass: no part is re-read


def _summary(inspection: Inspection) -> str:
    return f"{inspection.describe()}, {len(inspection.tokens):,} tokens"


def _flow_note(inspection: Inspection) -> str:
    flow = inspection.flow
    lag = vanishing_lag(flow.lags, flow.norms)
    where = f"falls below 1e-3 of its lag-1 value at lag {lag}" if lag else "stays above 1e-3 of its lag-1 value"
    clipped = (
        f" (lags clipped from {inspection.asked_lag} to the text's length)"
        if flow.lags[-1] < inspection.asked_lag
        else ""
    )
    return f"||dJ_t/dh_(t-k)|| over {flow.positions} positions, lags 1-{flow.lags[-1]}{clipped}: {where}."


def _link(layer: int, quantity: str, unit: int, text: str) -> str:
    href = f"#layer={layer}&amp;q={quantity}&amp;unit={unit}"
    return f'<a class="unit" data-layer="{layer}" data-unit="{unit}" href="{href}">{text}</a>'


def memory_table(inspection: Inspection, top: int) -> str:
    quantity = KEEP.get(inspection.cell, "h")
    rows = "".join(
        f"<tr><td>{rank}</td><td>{_link(m.layer, quantity, m.unit, f'layer {m.layer} unit {m.unit}')}</td>"
        f"<td>{m.score:.3f}</td><td>{_tokens(m.half_life)}</td></tr>"
        for rank, m in enumerate(inspection.memory[:top], start=1)
    )
    measure = html.escape(MEMORY_MEASURE[inspection.cell])
    head = f"<tr><th>#</th><th>unit</th><th>mean {measure}</th><th>half-life</th></tr>"
    return f'<table class="rank">{head}{rows}</table>'


def _tokens(half_life: float) -> str:
    return "never" if not math.isfinite(half_life) else f"{half_life:,.1f} tokens"


def property_table(inspection: Inspection) -> str:
    rows = []
    for name, trackers in inspection.trackers.items():
        label = PROPERTY_NAMES[name]
        if not trackers:
            rows.append(f'<tr><td>{label}</td><td colspan="2" class="muted">constant in this text</td></tr>')
        for i, t in enumerate(trackers):
            unit = _link(t.layer, t.quantity, t.unit, f"layer {t.layer} {t.quantity} unit {t.unit}")
            bar = f'<span class="bar" style="width:{abs(t.correlation) * 60:.0f}px"></span>'
            rows.append(
                f"<tr{' class=first' if i == 0 else ''}><td>{label if i == 0 else ''}</td><td>{unit}</td>"
                f"<td>{t.correlation:+.3f} {bar}</td></tr>"
            )
    head = "<tr><th>property</th><th>unit</th><th>Pearson r</th></tr>"
    return f'<table class="rank">{head}{"".join(rows)}</table>'


def saturation_chart(shares: list[dict[str, dict[str, float]]], cell: str) -> str:
    """Per layer and gate, one bar: the share below 0.1 (left), between, and above 0.9 (right)."""
    if not GATES[cell]:
        return '<p class="muted">The RNN has no gates.</p>'
    bars = [(k, gate, s["low"], s["high"]) for k, layer in enumerate(shares) for gate, s in layer.items()]
    width, left, row = 420, 90, 22
    height = row * len(bars) + 30
    out = [f'<svg class="chart" id="saturation" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    span = width - left - 10
    for i, (k, gate, low, high) in enumerate(bars):
        y = 6 + i * row
        out.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">layer {k} {gate}</text>')
        out.append(f'<rect class="mid" x="{left}" y="{y}" width="{span}" height="16"/>')
        out.append(
            f'<rect class="low" x="{left}" y="{y}" width="{span * low:.1f}" height="16">'
            f"<title>{low:.1%} below 0.1</title></rect>"
        )
        out.append(
            f'<rect class="high" x="{left + span * (1 - high):.1f}" y="{y}" width="{span * high:.1f}" '
            f'height="16"><title>{high:.1%} above 0.9</title></rect>'
        )
        out.append(f'<text class="{_on(low)}" x="{left + 4}" y="{y + 12}">{low:.0%}</text>')
        out.append(f'<text class="{_on(high)}" x="{width - 14}" y="{y + 12}" text-anchor="end">{high:.0%}</text>')
    y = 6 + len(bars) * row + 14
    out.append(f'<text x="{left}" y="{y}" class="low-t">■ below 0.1</text>')
    out.append(f'<text x="{width - 10}" y="{y}" text-anchor="end" class="high-t">above 0.9 ■</text>')
    out.append("</svg>")
    return "".join(out)


def _on(share: float) -> str:
    """White on a bar wide enough to hold the label, grey on the bare track."""
    return "in" if share >= 0.08 else "out"


def flow_chart(inspection: Inspection) -> str:
    """The gradient-flow curve(s) against the lag, log scale, each relative to nothing: raw norms."""
    flow = inspection.flow
    curves = {"h": flow.norms, **({"c": flow.cell_norms} if flow.cell_norms else {})}
    positive = [v for norms in curves.values() for v in norms if v > 0]
    width, height, left, bottom = 440, 260, 56, 34
    if not positive:
        return '<p class="muted">Every gradient norm is zero.</p>'
    top_decade = math.ceil(math.log10(max(positive)))
    low_decade = min(top_decade - 1, math.floor(math.log10(min(positive))))
    plot_w, plot_h = width - left - 12, height - bottom - 12
    last = max(flow.lags[-1], 2)

    def x(lag: float) -> float:
        return left + (lag - 1) / (last - 1) * plot_w

    def y(value: float) -> float:
        return 12 + (top_decade - math.log10(value)) / (top_decade - low_decade) * plot_h

    out = [f'<svg class="chart" id="flow" viewBox="0 0 {width} {height}" width="{width}" height="{height}">']
    step = max(1, (top_decade - low_decade) // 6)
    for decade in range(low_decade, top_decade + 1, step):
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - 12}" y1="{y(10.0**decade):.1f}" y2="{y(10.0**decade):.1f}"/>'
        )
        out.append(f'<text x="{left - 6}" y="{y(10.0**decade) + 4:.1f}" text-anchor="end">1e{decade}</text>')
    for lag in _ticks(last):
        out.append(f'<text x="{x(lag):.1f}" y="{height - bottom + 16}" text-anchor="middle">{lag}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">lag k (tokens)</text>')
    for name, norms in curves.items():
        points = [f"{x(lag):.1f},{y(v):.1f}" for lag, v in zip(flow.lags, norms, strict=True) if v > 0]
        out.append(
            f'<polyline class="curve {name}" points="{" ".join(points)}"><title>through {name}</title></polyline>'
        )
    legend = [("h", "through h")] + ([("c", "through the cell c")] if "c" in curves else [])
    for i, (name, label) in enumerate(legend):
        out.append(f'<text class="legend {name}" x="{width - 16}" y="{28 + 16 * i}" text-anchor="end">— {label}</text>')
    out.append("</svg>")
    return "".join(out)


def _ticks(last: int) -> list[int]:
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000) if last / s <= 8)
    return [1, *range(step, last + 1, step)] if step > 1 else list(range(1, last + 1))


def write_page(page: str, path: Path) -> int:
    """Write the page to `path` through a temporary file, so a failure leaves what was there; its size in bytes."""
    data = page.encode("utf-8")
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as exc:
        raise storage_error(exc, path) from None
    finally:
        partial.unlink(missing_ok=True)
    return len(data)
