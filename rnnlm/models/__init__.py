"""Language models: `RNNLM` (left to right) and `BidirectionalLM` (forward, backward, infill)."""

from __future__ import annotations

from rnnlm.config import ModelConfig
from rnnlm.models.bidirectional import BidirectionalLM
from rnnlm.models.lm import RNNLM


def build_model(vocab_size: int, config: ModelConfig) -> RNNLM:
    return BidirectionalLM(vocab_size, config) if config.bidirectional else RNNLM(vocab_size, config)
