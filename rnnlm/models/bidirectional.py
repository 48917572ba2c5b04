"""A deep bidirectional language model built so that no prediction sees its own target.

The notes' deep bidirectional RNN (Irsoy & Cardie 2014) outputs y_t = g(U[h->_t ; h<-_t] + c).
As a language model that lets position t read the token it predicts, and stacking layers that
read both directions of the layer below leaks the future into the forward direction. So, as in
deep bidirectional language models (Peters et al. 2018, ELMo): a forward stack and a backward
stack, each deep, never mixed between layers, share the embedding and the softmax, and

    forward head   p(x_t | x_<t) = softmax(W h->_{t-1} + b)
    backward head  p(x_t | x_>t) = softmax(W h<-_{t+1} + b)
    infill head    p(x_t | x_≠t) = softmax(U [h->_{t-1} ; h<-_{t+1}] + c)   (the notes' output equation)

Training minimises mean(forward, backward) + infill, each a mean per scored token. The forward
stack carries its state from window to window like RNNLM; the backward stack reads each window
from its right end with a fresh state, so its context ends at the window's end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.config import ModelConfig
from rnnlm.ids import PAD
from rnnlm.models.contract import HeadScore, LanguageModel, LMOutput, State, StateLayout
from rnnlm.models.parts import TokenStepper, drop_output, embed, init_weights, make_decoder, make_embedding
from rnnlm.models.stack import build_stack, layer_sizes


class BidirectionalLM(LanguageModel):
    def __init__(self, vocab_size: int, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embedding = make_embedding(vocab_size, config)
        self.rnn = build_stack(config)  # forward stack: the same names as a unidirectional model's
        self.backward_rnn = build_stack(config)
        self.decoder = make_decoder(vocab_size, config, self.embedding)  # shared by the forward and backward heads
        self.infill = nn.Linear(2 * layer_sizes(config)[-1], vocab_size)
        self.start_states: State | None = None  # the forward stack's; the backward one starts every window at zero
        init_weights(config, self.embedding, self.decoder, [self.rnn, self.backward_rnn])
        nn.init.uniform_(self.infill.weight, -config.init_range, config.init_range)
        nn.init.zeros_(self.infill.bias)

    @property
    def state_layout(self) -> StateLayout:
        return self.rnn.layout  # the forward stack's: the state a caller carries

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return embed(self.embedding, inputs, self.config, self.training)

    def encode(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The forward stack's top outputs (T, B, H) after output dropout, as a unidirectional model's."""
        hidden, state = self.rnn(self.embed(inputs), state)
        return drop_output(hidden, self.config, self.training), state

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """The forward head's log-probabilities (N, V) given the forward stack's outputs (N, H)."""
        return self.decoder.log_prob(hidden)

    def stepper(self, dtype: torch.dtype | None = None) -> TokenStepper:
        return TokenStepper(self.embedding, self.rnn, self.decoder, self.dtype, dtype)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, state: State) -> LMOutput:
        """inputs and targets (L, B) overlap: together they are the sequence s_0 .. s_L."""
        sequence = torch.cat([inputs[:1], targets])  # (L+1, B); PAD only at a column's end
        valid = sequence != PAD
        embedded = self.embed(sequence.clamp(min=0))  # (L+1, B, E)
        logits, state = self.head_logits(embedded, valid.sum(0), state)
        forward_nll, forward_n = self._score(logits["forward"], targets)
        backward_nll, backward_n = self._score(logits["backward"], sequence[:-1].masked_fill(~valid[1:], PAD))
        infill_nll, infill_n = self._score(logits["infill"], sequence[1:-1].masked_fill(~valid[2:], PAD))
        objective = (forward_nll / forward_n + backward_nll / backward_n) / 2 + infill_nll / infill_n.clamp(min=1)
        return LMOutput(
            forward_nll,
            forward_n,
            state,
            objective,
            backward=HeadScore(backward_nll, backward_n),
            infill=HeadScore(infill_nll, infill_n),
        )

    def head_logits(
        self, embedded: torch.Tensor, lengths: torch.Tensor, state: State
    ) -> tuple[dict[str, torch.Tensor], State]:
        """Logits of the three heads over s_0 .. s_L, from its embeddings (L+1, B, E).

        forward[k] predicts s_{k+1} from ahead[k] (has read s_0 .. s_k);
        backward[k] predicts s_k from behind[k+1] (has read s_L .. s_{k+1});
        infill[k] predicts s_{k+1} from ahead[k] and behind[k+2].
        """
        ahead, state = self.rnn(embedded[:-1], state)  # (L, B, H)
        behind = self.read_backward(embedded, lengths)  # (L+1, B, H)
        ahead, behind = drop_output(ahead, self.config, self.training), drop_output(behind, self.config, self.training)
        logits = {
            "forward": self.decoder(ahead),
            "backward": self.decoder(behind[1:]),
            "infill": self.infill(torch.cat([ahead[:-1], behind[2:]], dim=-1)),
        }
        return logits, state

    def _score(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nll = F.cross_entropy(
            logits.reshape(-1, self.vocab_size), targets.reshape(-1), ignore_index=PAD, reduction="sum"
        )
        return nll, (targets != PAD).sum()

    def read_backward(self, embedded: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Run the backward stack right to left over each column's first `lengths` positions.

        Each column's valid part is reversed in place (padding stays at the end, where it cannot
        reach a valid position), read left to right from a zero state, and the outputs put back.
        """
        T, B = embedded.shape[:2]
        steps = torch.arange(T, device=embedded.device).unsqueeze(1)  # (T, 1)
        order = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B); its own inverse
        gather = order.unsqueeze(-1)
        reversed_inputs = embedded.gather(0, gather.expand_as(embedded))
        outputs, _ = self.backward_rnn(reversed_inputs, self.init_state(B, embedded.device))
        return outputs.gather(0, gather.expand(-1, -1, outputs.size(-1)))  # (T, B, H)

    def step_backward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Generation right to left: tokens (B,) -> log-probabilities (B, V) of the token before."""
        hidden, state = self.backward_rnn(self.embedding(tokens).unsqueeze(0), state)
        return F.log_softmax(self.decoder(hidden[-1]).float(), dim=-1), state

    def prefill_backward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Read tokens (T, B) right to left (tokens[-1] first); log-probabilities of the token before tokens[0]."""
        hidden, state = self.backward_rnn(self.embedding(tokens.flip(0)), state)
        return F.log_softmax(self.decoder(hidden[-1]).float(), dim=-1), state

    def infill_log_probs(self, left: torch.Tensor, right: torch.Tensor, start: State | None = None) -> torch.Tensor:
        """log p(blank | left, right) over the vocabulary, for 1-D token tensors around one blank.

        The forward stack reads `left` from `start` (zeros if None), the backward stack `right` from zeros,
        as in training."""
        start = start if start is not None else self.init_state(1, left.device)
        ahead, _ = self.rnn(self.embedding(left).unsqueeze(1), start)
        behind, _ = self.backward_rnn(self.embedding(right.flip(0)).unsqueeze(1), self.init_state(1, right.device))
        logits = self.infill(torch.cat([ahead[-1], behind[-1]], dim=-1))  # (1, V)
        return F.log_softmax(logits.float(), dim=-1)[0]
