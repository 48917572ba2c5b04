"""`RNNLM`: token embedding -> recurrent stack -> dropout -> decoder, with the loss inside.

Tensors are time-major everywhere, as the fused kernels expect: token ids are `(T, B)`, hidden
activations `(T, B, H)`. The trainer and the evaluator never see logits: `forward` returns the summed
negative log-likelihood and the number of scored tokens (models/contract.py), so the output layer can
change freely: a full softmax or an adaptive one (`models/softmax.py`), both named `decoder`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rnnlm.config import ModelConfig
from rnnlm.ids import PAD
from rnnlm.models.contract import LanguageModel, LMOutput, State, StateLayout
from rnnlm.models.parts import TokenStepper, drop_output, embed, init_weights, make_decoder, make_embedding
from rnnlm.models.regularize import activation_penalty
from rnnlm.models.softmax import AdaptiveSoftmax, Workspace, chunked_cross_entropy, fused_cross_entropy
from rnnlm.models.stack import build_stack


class RNNLM(LanguageModel):
    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = make_embedding(vocab_size, config)
        self.rnn = build_stack(config)
        self.decoder = make_decoder(vocab_size, config, self.embedding)
        self.workspace = Workspace()  # the fused loss's logits buffer, kept between training steps
        self.start_states: State | None = None  # fresh starts' (rnnlm/warmstart.py); set by load_model
        init_weights(config, self.embedding, self.decoder, [self.rnn])

    @property
    def state_layout(self) -> StateLayout:
        return self.rnn.layout

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, state: State) -> LMOutput:
        """Score `targets` (T, B) given `inputs` (T, B); PAD targets are not scored."""
        raw, state = self.rnn(self.embed(inputs), state)  # (T, B, H)
        hidden = drop_output(raw, self.config, self.training)
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
        """Log-probabilities (N, V) of the next token given the top layer's output (N, H)."""
        return self.decoder.log_prob(hidden)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return embed(self.embedding, inputs, self.config, self.training)

    def encode(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        hidden, state = self.rnn(self.embed(inputs), state)  # (T, B, H)
        return drop_output(hidden, self.config, self.training), state

    def stepper(self, dtype: torch.dtype | None = None) -> TokenStepper:
        return TokenStepper(self.embedding, self.rnn, self.decoder, self.dtype, dtype)


def detach_state(state: State) -> State:
    """Cut the graph between BPTT windows; the values carry over, the gradients do not."""
    return tuple(s.detach() for s in state)
