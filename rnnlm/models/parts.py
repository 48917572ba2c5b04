"""The parts both language models are built from: embedding, output layer, their initialisation, the
dropouts around the recurrent stack, and the fast one-step function for generation.

Each model keeps its parts as its own attributes (`embedding`, `rnn`, `decoder`, ...), so the checkpoint's
parameter names are the parts' names, whichever model holds them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm import native
from rnnlm.config import ModelConfig
from rnnlm.models.cells import Gates, native_layers
from rnnlm.models.contract import State
from rnnlm.models.regularize import dropout, embedding_dropout
from rnnlm.models.softmax import AdaptiveSoftmax, FullSoftmax, LinearLogProbs, LogProbs, resolve_cutoffs
from rnnlm.models.stack import RecurrentStack, layer_sizes

Decoder = FullSoftmax | AdaptiveSoftmax


def make_embedding(vocab_size: int, config: ModelConfig) -> nn.Embedding:
    return nn.Embedding(vocab_size, config.embed_size)


def make_decoder(vocab_size: int, config: ModelConfig, embedding: nn.Embedding) -> Decoder:
    """The output layer over the top layer's outputs, tied to `embedding` when the config says so."""
    top = layer_sizes(config)[-1]
    decoder: Decoder
    if config.softmax == "adaptive":  # Grave et al. 2017; config validation refuses tying it
        decoder = AdaptiveSoftmax(
            top,
            vocab_size,
            resolve_cutoffs(config.cutoffs, vocab_size),
            config.adaptive_div,
            config.adaptive_cluster_grad,
        )
    else:
        decoder = FullSoftmax(top, vocab_size)
    if config.tie_weights:  # Press & Wolf 2017; Inan et al. 2017
        decoder.weight = embedding.weight
    return decoder


def init_weights(config: ModelConfig, embedding: nn.Embedding, decoder: Decoder, stacks: list[RecurrentStack]) -> None:
    """The configured initialisation, in this order (a tied decoder's draw is the embedding's)."""
    nn.init.uniform_(embedding.weight, -config.init_range, config.init_range)
    decoder.init_weights(config.init_range)
    for stack in stacks:
        init_stack(stack, config)


def init_stack(stack: nn.Module, c: ModelConfig) -> None:
    if c.init == "uniform":  # Zaremba et al. 2014: every parameter ~ U(-r, r), the scan cells' norms aside
        for name, p in stack.named_parameters():
            if "norm" not in name:
                nn.init.uniform_(p, -c.init_range, c.init_range)
    if c.cell == "lstm":  # gate order i, f, g, o: a forget gate open at the start remembers
        with torch.no_grad():
            for layer, H in enumerate(layer_sizes(c)[1:]):
                bias_ih = getattr(stack, f"bias_ih_l{layer}")
                bias_hh = getattr(stack, f"bias_hh_l{layer}")
                if c.init == "default":
                    bias_ih[H : 2 * H] = c.forget_bias
                    bias_hh[H : 2 * H] = 0.0
                else:
                    bias_ih[H : 2 * H] += c.forget_bias


def embed(embedding: nn.Embedding, inputs: torch.Tensor, config: ModelConfig, training: bool) -> torch.Tensor:
    """Token ids (T, B) -> embeddings (T, B, E), with embedding and input dropout when training."""
    weight = embedding_dropout(embedding.weight, config.dropout_embedding, training)
    return dropout(F.embedding(inputs, weight), config.dropouts()[0], training, config.locked_dropout)


def drop_output(hidden: torch.Tensor, config: ModelConfig, training: bool) -> torch.Tensor:
    """Dropout on the top layer's outputs (T, B, H), before the output layer."""
    return dropout(hidden, config.dropouts()[2], training, config.locked_dropout)


class TokenStepper:
    """`model.step` for generation: an embedding row, one step of the stack's stepper (models/cells.py's
    `StackStepper`, models/mincells.py's `MinStepper`: the stack's output and the new state), and the output
    layer's own fast log-probabilities. The same numbers as `model.step` up to float rounding
    (tests/test_contract.py). With `dtype` bfloat16 the weights it reads are a bf16 copy (half the bytes
    read per token); the state and the softmax stay in `exact`, the model's dtype."""

    def __init__(
        self,
        embedding: nn.Embedding,
        stack: RecurrentStack,
        decoder: Decoder,
        exact: torch.dtype,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.dtype = dtype or exact
        self.stack = stack.stepper(exact, self.dtype)
        self.layout = stack.layout
        self.parts = (embedding, stack, decoder)

    # The copies the one-step path reads, made when it first runs (rnnlm/native's generator makes its own).
    @functools.cached_property
    def embedding(self) -> torch.Tensor:
        with torch.no_grad():
            return self.parts[0].weight.detach().to(self.dtype).contiguous()

    @functools.cached_property
    def decoder(self) -> LinearLogProbs | LogProbs:
        return self.parts[2].stepper(self.dtype)

    @functools.cached_property
    def scores(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The full softmax's logits; the adaptive softmax's log-probabilities are its scores."""
        return self.decoder.scores if isinstance(self.decoder, LinearLogProbs) else self.decoder

    def generator(self) -> native.Generator | None:
        """The whole of generation in C (rnnlm/native), where it runs the same equations: float32 weights
        on the CPU, the LSTM, GRU or tanh / ReLU Elman cell, the full softmax; None elsewhere, with
        RNNLM_NATIVE=0, or without a C compiler."""
        embedding, _, decoder = self.parts
        stack = native_layers(self.stack)
        if stack is None or not isinstance(decoder, FullSoftmax) or self.dtype != torch.float32:
            return None
        cell, layers = stack
        if embedding.weight.device.type != "cpu" or len(layers) > native.MAX_LAYERS:
            return None
        lib = native.library() if native.enabled() else None
        if lib is None:
            return None
        return native.Generator(lib, cell, embedding.weight, [w.all() for w in layers], decoder.weight, decoder.bias)

    def __call__(
        self, tokens: torch.Tensor, state: State, record: list[Gates] | None = None, *, normalized: bool = True
    ) -> tuple[torch.Tensor, State]:
        """tokens (B,) -> log-probabilities (B, V) of the next token, the new state; with `record`, each
        layer's gates (models/cells.py) are appended to it. `normalized` False gives scores instead: the
        log-probabilities up to a constant per row (the logits), whose softmax is the same distribution."""
        hidden, state = self.stack(torch.index_select(self.embedding, 0, tokens), state, record)
        return (self.decoder if normalized else self.scores)(hidden), state
