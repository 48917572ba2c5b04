"""Simple properties of a text, found automatically, and the units that track them (`rnnlm inspect`).

Each property is read as the model reads the text: a token's value is the one after its last character,
so a unit that tracks it needs to have seen nothing beyond that token. The "quote-detecting cell" of
Karpathy et al. (2015), "Visualizing and Understanding Recurrent Networks", found by ranking, not by eye.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tracker:
    layer: int
    quantity: str
    unit: int
    correlation: float  # Pearson's r between the unit's value and the property, over the tokens


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


def property_ranking(
    columns: Iterable[tuple[int, str, np.ndarray]], properties: dict[str, np.ndarray], top: int
) -> dict[str, list[Tracker]]:
    """Per property, the `top` units of `columns` ((layer, quantity, values (N, H)) each) whose values correlate
    most with it, by |r| (Pearson's r over the tokens);
    an empty list for a property that never changes in this text."""
    ranked: dict[str, list[Tracker]] = {}
    usable = {name: p for name, p in properties.items() if p.std() > 0}
    standard = {name: (p - p.mean()) / p.std() for name, p in usable.items()}
    found: dict[str, list[Tracker]] = {name: [] for name in usable}
    for layer, quantity, values in columns:
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
