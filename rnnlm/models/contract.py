"""The model contract: what every language model offers, and all that the other rooms may use of one.

A model (`RNNLM`, `BidirectionalLM`; built by `rnnlm.models.build_model`) is a `LanguageModel`:

- `model(inputs, targets, state) -> LMOutput`: token ids `(T, B)` in, the targets `(T, B)` they predict
  (`rnnlm.ids.PAD` targets are not scored), and the state to start from. The output holds the summed
  negative log-likelihood `nll` in nats, the number of scored targets `tokens`, the new `state`, the
  named heads a model has besides its own (`backward`, `infill`: a `HeadScore` each, or None), and
  `training_objective()`, the number training minimises. Nobody outside the model sees logits.
- `init_state(batch_size, device)`: the zero state. A state is a flat tuple of `(B, H_k)` tensors laid
  out as `model.state_layout` says (per layer the cell's `state_names`, "h" or "h", "c"; layer after
  layer), in `model.dtype`, the dtype the model carries its state and weights in (`model.device` too).
- generation, one token at a time after a prompt: `prefill(tokens (T, B), state) -> (log_probs (B, V),
  state)` reads a prompt; `step(tokens (B,), state)` reads one more token. `stepper(dtype)` gives a
  callable with `step`'s signature and numbers that runs faster (one matrix product per layer on packed
  weights, optionally bf16), for drawing many tokens; `model.step` is the reference it is tested against.
  Called with `normalized=False` it returns scores, log-probabilities up to a constant per row (sampling).
  Its `generator()`, where not None, draws samples a block of tokens per call in C (rnnlm/native:
  float32 LSTM, GRU and tanh / ReLU Elman stacks with the full softmax).
  Given a list as `record`, the stepper appends each layer's gates to it (models/cells.py: `LSTMGates`
  i, f, g, o, c, h; `GRUGates` z, r, n, h; `ElmanGates` h; models/mincells.py: `MinGRUGates` z, n, h;
  `MinLSTMGates` f, i (normalised), n, h), for looking inside the cells.
- `encode(inputs (T, B), state) -> (hidden (T, B, H), state)`: the stack's output after output dropout
  (the top layer's h; with the scan cells' residual layout the stream above it, models/mincells.py),
  and `log_probs(hidden (N, H)) -> (N, V)`: the next-token distribution given it. Together they score
  tokens from hidden states (start-state mixtures, per-token scores) without a loss.
- `start_states`: K states `(K, H)` per tensor that fresh starts mix (rnnlm/warmstart.py), or None;
  `num_parameters()`: the number of weights, tied ones counted once; `config` and `vocab_size`: what it
  was built from. As any nn.Module: `parameters()`, `state_dict()` (the checkpoint's names), `train()`/`eval()`.

A bidirectional model adds `prefill_backward`, `step_backward` and `infill_log_probs` (its docstrings).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from rnnlm.config import ModelConfig

State = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class StateLayout:
    """How a state tuple is laid out: for each layer, bottom first, one `(B, size)` tensor per name."""

    names: tuple[str, ...]  # per layer: the cell's `state_names`, ("h",) or ("h", "c"); "h" always first
    sizes: tuple[int, ...]  # each layer's hidden size

    @property
    def per_layer(self) -> int:
        return len(self.names)

    def zeros(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> State:
        return tuple(
            torch.zeros(batch_size, size, device=device, dtype=dtype) for size in self.sizes for _ in self.names
        )

    def layer(self, state: State, k: int) -> State:
        """Layer k's tensors, in the order of `names`."""
        return state[k * self.per_layer : (k + 1) * self.per_layer]

    def by_name(self, state: State, name: str) -> tuple[torch.Tensor, ...]:
        """One tensor per layer, bottom first: e.g. every layer's "c"."""
        return state[self.names.index(name) :: self.per_layer]


@dataclass
class HeadScore:
    nll: torch.Tensor  # summed negative log-likelihood over the head's scored targets, in nats
    tokens: torch.Tensor  # number of targets the head scored


@dataclass
class LMOutput:
    nll: torch.Tensor  # summed negative log-likelihood over the scored targets, in nats
    tokens: torch.Tensor  # number of scored targets
    state: State
    objective: torch.Tensor | None = None  # what training minimises, when not the mean nll per token
    backward: HeadScore | None = None  # a bidirectional model's right-to-left head
    infill: HeadScore | None = None  # a bidirectional model's head that reads both neighbours

    def training_objective(self) -> torch.Tensor:
        return self.objective if self.objective is not None else self.nll / self.tokens

    def heads(self) -> dict[str, HeadScore]:
        """The heads this output has besides the model's own, by name (the names `rnnlm eval` reports)."""
        named = {"backward": self.backward, "infill": self.infill}
        return {name: head for name, head in named.items() if head is not None}


class Stepper(Protocol):
    """The fast one-step function: tokens (B,) and a state -> log-probabilities (B, V) and the new state.
    `normalized` False: scores instead, the log-probabilities up to a constant per row (the logits), which
    is all a sampler needs (softmax(scores / T) is the same distribution)."""

    def __call__(
        self, tokens: torch.Tensor, state: State, record: list | None = None, *, normalized: bool = True
    ) -> tuple[torch.Tensor, State]: ...

    def generator(self) -> Drawer | None:
        """The same model's sampling in one call per block of tokens, where it is offered (rnnlm/native)."""
        ...


class Drawer(Protocol):
    """Sampling a block of tokens per call: read `tokens` (B,), then draw `count` tokens per sample from
    softmax(logits / temperature) restricted by top_k and top_p, the k-th with uniforms[k] (B,) as
    `choose` draws (temperature 0: the argmax; no uniforms), each read in turn. Returns the tokens drawn
    (count, B) and the state after all of them but the last, which the next call reads."""

    def __call__(
        self,
        tokens: torch.Tensor,
        state: State,
        count: int,
        temperature: float,
        uniforms: torch.Tensor | None,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> tuple[torch.Tensor, State]: ...


class LanguageModel(nn.Module, abc.ABC):
    """The contract in the module docstring; `prefill`, `step` and `num_parameters` follow from the rest."""

    config: ModelConfig
    vocab_size: int
    start_states: State | None

    @abc.abstractmethod
    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, state: State) -> LMOutput: ...

    @property
    @abc.abstractmethod
    def state_layout(self) -> StateLayout: ...

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @abc.abstractmethod
    def encode(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]: ...

    @abc.abstractmethod
    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def stepper(self, dtype: torch.dtype | None = None) -> Stepper:
        """`step`'s fast twin; `dtype` (e.g. torch.bfloat16) for the weights it reads, the model's by default."""

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        return self.state_layout.zeros(batch_size, device or self.device, self.dtype)

    def prefill(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Read tokens (T, B); return log-probabilities (B, V) for the token after the last one."""
        hidden, state = self.encode(tokens, state)
        return self.log_probs(hidden[-1]), state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One generation step: tokens (B,) -> log-probabilities (B, V) of the next token, new state."""
        return self.prefill(tokens.unsqueeze(0), state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are one parameter
