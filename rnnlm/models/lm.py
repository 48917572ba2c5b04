"""`RNNLM`: token embedding -> recurrent stack -> dropout -> decoder, with the loss inside.

Tensors are time-major everywhere, as the fused kernels expect: token ids are `(T, B)`, hidden
activations `(T, B, H)`. The trainer and the evaluator never see logits: `forward` returns the summed
negative log-likelihood and the number of scored tokens, so the output layer can change freely: a full
softmax (`nn.Linear`) or an adaptive one (`models/softmax.py`), both named `decoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.config import ModelConfig
from rnnlm.ids import PAD
from rnnlm.models.regularize import activation_penalty, dropout, embedding_dropout
from rnnlm.models.softmax import (AdaptiveSoftmax, Workspace, chunked_cross_entropy, fused_cross_entropy, log_softmax,
                                  resolve_cutoffs)
from rnnlm.models.stack import State, build_stack, layer_sizes


@dataclass
class LMOutput:
    nll: torch.Tensor  # summed negative log-likelihood over the scored targets, in nats
    tokens: torch.Tensor  # number of scored targets
    state: State
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. backward_nll, backward_tokens
    objective: torch.Tensor | None = None  # what training minimises, when not the mean nll per token

    def training_objective(self) -> torch.Tensor:
        return self.objective if self.objective is not None else self.nll / self.tokens


class RNNLM(nn.Module):
    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, config.embed_size)
        self.rnn = build_stack(config)
        top = layer_sizes(config)[-1]
        self.decoder: nn.Linear | AdaptiveSoftmax
        if config.softmax == "adaptive":  # Grave et al. 2017; config validation refuses tying it
            self.decoder = AdaptiveSoftmax(top, vocab_size, resolve_cutoffs(config.cutoffs, vocab_size),
                                           config.adaptive_div, config.adaptive_cluster_grad)
        else:
            self.decoder = nn.Linear(top, vocab_size)
        if config.tie_weights:  # Press & Wolf 2017; Inan et al. 2017
            self.decoder.weight = self.embedding.weight
        self.workspace = Workspace()  # the fused loss's logits buffer, kept between training steps
        self.start_states: State | None = None  # fresh starts' (rnnlm/warmstart.py); set by load_model
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        nn.init.uniform_(self.embedding.weight, -c.init_range, c.init_range)
        if isinstance(self.decoder, AdaptiveSoftmax):
            self.decoder.reset_parameters(c.init_range)
        else:
            nn.init.uniform_(self.decoder.weight, -c.init_range, c.init_range)
            nn.init.zeros_(self.decoder.bias)
        for stack in self.stacks():
            init_stack(stack, c)

    def stacks(self) -> list[nn.Module]:
        return [self.rnn]

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        weight = self.embedding.weight
        return self.rnn.init_state(batch_size, device or weight.device, weight.dtype)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, state: State) -> LMOutput:
        """Score `targets` (T, B) given `inputs` (T, B); PAD targets are not scored."""
        raw, state = self.rnn(self.embed(inputs), state)  # (T, B, H)
        hidden = self.drop_output(raw)
        nll = self.score(hidden, targets)
        out = LMOutput(nll, (targets != PAD).sum(), state)
        c = self.config
        if self.training and (c.activation_reg or c.temporal_reg):
            out.objective = nll / out.tokens + activation_penalty(raw, hidden, c.activation_reg, c.temporal_reg)
        return out

    def score(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of `targets` (T, B) given the top layer's output (T, B, H)."""
        hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)  # (T * B, H), (T * B,)
        if isinstance(self.decoder, AdaptiveSoftmax):
            return self.decoder.nll(hidden, targets)
        if self.config.loss_chunk:  # never the whole (T * B, V) logits
            return chunked_cross_entropy(hidden, self.decoder, targets, self.config.loss_chunk)
        half = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        fusable = hidden.requires_grad and hidden.device.type == "cpu" and half in (None, torch.bfloat16)
        if self.config.fused_loss and fusable:  # CPU training in fp32 or bf16 (fp16's overflows: GradScaler's)
            return fused_cross_entropy(hidden, self.decoder, targets, self.workspace, half)
        return F.cross_entropy(self.decoder(hidden), targets, ignore_index=PAD, reduction="sum")

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, V) of the next token given the top layer's output (B, H)."""
        if isinstance(self.decoder, AdaptiveSoftmax):
            return self.decoder.log_prob(hidden)
        return log_softmax(self.decoder(hidden))  # float32 at least

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token ids (T, B) -> embeddings (T, B, E), with embedding and input dropout when training."""
        c = self.config
        weight = embedding_dropout(self.embedding.weight, c.dropout_embedding, self.training)
        return dropout(F.embedding(inputs, weight), c.dropouts()[0], self.training, c.locked_dropout)

    def drop_output(self, hidden: torch.Tensor) -> torch.Tensor:
        return dropout(hidden, self.config.dropouts()[2], self.training, self.config.locked_dropout)

    def encode(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        hidden, state = self.rnn(self.embed(inputs), state)  # (T, B, H)
        return self.drop_output(hidden), state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One generation step: tokens (B,) -> log-probabilities (B, V) of the next token, new state."""
        return self.prefill(tokens.unsqueeze(0), state)

    def prefill(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Read tokens (T, B); return log-probabilities (B, V) for the token after the last one."""
        hidden, state = self.encode(tokens, state)
        return self.log_probs(hidden[-1]), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are one parameter


def init_stack(stack: nn.Module, c: ModelConfig) -> None:
    if c.init == "uniform":  # Zaremba et al. 2014: every parameter ~ U(-r, r)
        for p in stack.parameters():
            nn.init.uniform_(p, -c.init_range, c.init_range)
    if c.cell == "lstm":  # gate order i, f, g, o: a forget gate open at the start remembers
        with torch.no_grad():
            for layer, H in enumerate(layer_sizes(c)[1:]):
                bias_ih = getattr(stack, f"bias_ih_l{layer}")
                bias_hh = getattr(stack, f"bias_hh_l{layer}")
                if c.init == "default":
                    bias_ih[H: 2 * H] = c.forget_bias
                    bias_hh[H: 2 * H] = 0.0
                else:
                    bias_ih[H: 2 * H] += c.forget_bias


def detach_state(state: State) -> State:
    """Cut the graph between BPTT windows; the values carry over, the gradients do not."""
    return tuple(s.detach() for s in state)
