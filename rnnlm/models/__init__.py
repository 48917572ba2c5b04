"""Language models: `RNNLM` (left to right) and `BidirectionalLM` (forward, backward, infill), each a
`LanguageModel` (models/contract.py: what every other room may use of a model)."""

from __future__ import annotations

from rnnlm.config import ModelConfig
from rnnlm.models.bidirectional import BidirectionalLM
from rnnlm.models.contract import HeadScore, LanguageModel, LMOutput, State, StateLayout, Stepper
from rnnlm.models.lm import RNNLM

__all__ = [
    "BidirectionalLM",
    "HeadScore",
    "LanguageModel",
    "LMOutput",
    "RNNLM",
    "State",
    "StateLayout",
    "Stepper",
    "build_model",
]


def build_model(vocab_size: int, config: ModelConfig) -> LanguageModel:
    return BidirectionalLM(vocab_size, config) if config.bidirectional else RNNLM(vocab_size, config)
