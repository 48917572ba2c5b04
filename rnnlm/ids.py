"""Token-id conventions shared by the data pipeline and the models (neither imports the other)."""

from __future__ import annotations

PAD = -1  # a target id that is not scored: the padding at the end of the last evaluation column
