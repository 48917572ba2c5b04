"""Output layers and their losses: the full softmax (`FullSoftmax`), its fused and chunked losses, and
the adaptive softmax (Grave et al. 2017, "Efficient softmax approximation for GPUs").

Each output layer gives `log_prob(hidden)`, the next-token log-probabilities, and `stepper(dtype)`, the
same function on weights laid out for generation (one token at a time); the full softmax's stepper also
gives `scores`, its logits, for a sampler to draw from without normalising them first.

The vocabulary, sorted by frequency, is cut into a head (the most frequent words) and tail clusters
of rarer words. The head scores its words plus one entry per cluster; cluster k scores its own words
from the hidden state projected down to hidden / div^k. Then

    log p(w) = log p_head(w)                                   w in the head
    log p(w) = log p_head(cluster k) + log p_k(w | cluster k)  w in cluster k

a proper distribution over all V words: its perplexity is exact, not an estimate. Training computes
cluster k only for the targets that fall in it, so most tokens (the frequent ones) pay for the head alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from rnnlm.errors import ConfigError
from rnnlm.ids import PAD

DEFAULT_CUTOFFS = (2000, 10_000, 50_000)  # each cluster 5x the last; those below the vocabulary are used
LogProbs = Callable[[torch.Tensor], torch.Tensor]  # hidden (N, H) -> log-probabilities (N, V), float32 at least


def resolve_cutoffs(cutoffs: tuple[int, ...], vocab_size: int) -> list[int]:
    """The configured cutoffs, or the default ones for this vocabulary; ConfigError if one does not fit it."""
    if not cutoffs:
        return [cut for cut in DEFAULT_CUTOFFS if cut < vocab_size]  # none when V <= 2000: the full softmax
    if cutoffs[-1] >= vocab_size:
        raise ConfigError(
            f"model.cutoffs must be below the vocabulary size, {vocab_size:,} words here (got {list(cutoffs)})"
        )
    return list(cutoffs)


class FullSoftmax(nn.Linear):
    """The full softmax over the vocabulary: logits W h + b (an nn.Linear, whose weight the embedding may share)."""

    def init_weights(self, init_range: float) -> None:
        nn.init.uniform_(self.weight, -init_range, init_range)
        nn.init.zeros_(self.bias)

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, V) of every word given `hidden` (N, H), in float32 at least."""
        return log_softmax(self(hidden))

    def stepper(self, dtype: torch.dtype) -> LinearLogProbs:
        return LinearLogProbs(self, dtype)


class LinearLogProbs:
    """`FullSoftmax.log_prob` for generation: W^T and b copied once in `dtype`, one product per call.
    `scores` stops before the softmax: the logits, in float32 at least, all that a sampler needs.

    On a CPU a one-row product (one token of one sample) runs on one thread however many torch has, so
    with `parts` > 1 (default: torch's thread count on a CPU, 1 elsewhere) W^T is stored as `parts` slices
    of the vocabulary, (P, H, V/P), and one batched product gives each thread a slice to read."""

    def __init__(self, decoder: nn.Linear, dtype: torch.dtype, parts: int = 0) -> None:
        vocab = decoder.weight.size(0)
        threads = torch.get_num_threads() if decoder.weight.device.type == "cpu" else 1
        self.parts = min(parts or threads, vocab)
        self.vocab, width = vocab, -(-vocab // self.parts)  # the last slice padded with zero columns
        with torch.no_grad():
            weight = decoder.weight.detach().t().to(dtype)  # (H, V)
            bias = decoder.bias.detach().to(dtype)
            pad = self.parts * width - vocab
            weight, bias = F.pad(weight, (0, pad)), F.pad(bias, (0, pad))
            self.weight = weight.unflatten(1, (self.parts, width)).transpose(0, 1).contiguous()  # (P, H, V/P)
            self.bias = bias.view(self.parts, 1, width)
        self.dtype = dtype
        self.exact = torch.promote_types(dtype, torch.float32)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return log_softmax(self._logits(hidden))

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits (N, V): the log-probabilities up to a constant per row."""
        logits = self._logits(hidden)
        return logits if self.dtype == self.exact else logits.to(self.exact)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.to(self.dtype)
        if self.parts == 1:
            return torch.addmm(self.bias[0], hidden, self.weight[0])
        sliced = torch.baddbmm(self.bias, hidden.expand(self.parts, *hidden.shape), self.weight)  # (P, N, V/P)
        return sliced.transpose(0, 1).flatten(1)[:, : self.vocab]


class AdaptiveSoftmax(nn.Module):
    starts: torch.Tensor  # the first id of each cluster, a buffer (registered in __init__)

    def __init__(
        self, in_features: int, vocab_size: int, cutoffs: list[int], div_value: float, cluster_grad: float
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.bounds = [*cutoffs, vocab_size]  # cluster k holds ids bounds[k] .. bounds[k + 1] - 1
        self.shortlist = self.bounds[0]
        self.head = nn.Linear(in_features, self.shortlist + len(cutoffs))  # head words, then one per cluster
        self.tail = nn.ModuleList()
        for k in range(len(cutoffs)):
            projected = max(1, int(in_features // div_value ** (k + 1)))  # rarer words, fewer dimensions
            self.tail.append(
                nn.Sequential(
                    nn.Linear(in_features, projected, bias=False),
                    nn.Linear(projected, self.bounds[k + 1] - self.bounds[k]),
                )
            )
        self.register_buffer("starts", torch.tensor(cutoffs, dtype=torch.long), persistent=False)
        self.cluster_grad = cluster_grad

    def init_weights(self, init_range: float) -> None:
        """Output weights ~ U(-init_range, init_range) and biases zero, as the full decoder's; each
        cluster's projection with orthonormal rows: a well-conditioned map of the hidden state from
        the start, where a uniform draw stretches some directions more than others (the evidence, thin
        and mixed: docs/benchmarks.md)."""
        clusters = self._clusters()
        for module in [self.head, *(output for _, output in clusters)]:
            nn.init.uniform_(module.weight, -init_range, init_range)
            nn.init.zeros_(module.bias)
        for projection, _ in clusters:
            nn.init.orthogonal_(projection.weight)

    def _clusters(self) -> list[tuple[nn.Linear, nn.Linear]]:
        """Each tail cluster's projection and output layer (the two Linears of its Sequential)."""
        return cast("list[tuple[nn.Linear, nn.Linear]]", [tuple(cluster.children()) for cluster in self.tail])

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head's logits (N, shortlist + clusters); the gradient of its cluster rows is scaled by
        `cluster_grad`, the forward pass unchanged.

        One cluster entry carries the probability of thousands of words, so on nearly every token its
        gradient is as large as a frequent word's, where the full softmax spreads that mass over thousands
        of rows that each move a little. At a learning rate tuned for the full softmax, SGD overshoots
        it: the entry swings about, and the model overpredicts its cluster (docs/benchmarks.md)."""
        weight, bias = self.head.weight, self.head.bias
        if self.cluster_grad != 1.0 and torch.is_grad_enabled():
            weight = ScaleRowGrad.apply(weight, self.shortlist, self.cluster_grad)
            bias = ScaleRowGrad.apply(bias, self.shortlist, self.cluster_grad)
        return F.linear(hidden, weight, bias)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of `targets` (N,) given `hidden` (N, H); PAD targets are not scored."""
        scored = targets != PAD
        cluster = torch.bucketize(targets, self.starts, right=True)  # (N,) 0: head, k: tail cluster k - 1
        head_index = torch.where(cluster == 0, targets, self.shortlist + cluster - 1).clamp(min=0)  # PAD -> 0
        log_prob = log_softmax(self.head_logits(hidden)).gather(1, head_index.unsqueeze(1)).squeeze(1)  # (N,)
        for k, tail in enumerate(self.tail):
            # only the targets in this cluster; with none, the tail still runs on zero rows, so its
            # parameters get (zero) gradients every step, as DistributedDataParallel expects
            rows = ((cluster == k + 1) & scored).nonzero().squeeze(1)
            within = (targets[rows] - self.bounds[k]).unsqueeze(1)
            log_prob = log_prob.index_add(0, rows, log_softmax(tail(hidden[rows])).gather(1, within).squeeze(1))
        return -log_prob.masked_fill(~scored, 0.0).sum()

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, V) of every word given `hidden` (N, H)."""
        head = log_softmax(self.head_logits(hidden))  # (N, shortlist + clusters)
        parts = [head[:, : self.shortlist]]
        for k, tail in enumerate(self.tail):
            parts.append(log_softmax(tail(hidden)) + head[:, self.shortlist + k : self.shortlist + k + 1])
        return torch.cat(parts, dim=1)

    def stepper(self, dtype: torch.dtype) -> LogProbs:
        """`log_prob` itself: the adaptive softmax generates with its own weights, whatever `dtype`."""
        return self.log_prob


class ScaleRowGrad(torch.autograd.Function):
    """The identity on `tensor`, whose gradient rows from `start` on are multiplied by `scale`."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, start: int, scale: float) -> torch.Tensor:
        ctx.start, ctx.scale = start, scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.clone()
        grad[ctx.start :] *= ctx.scale
        return grad, None, None


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """In float32 at least, as the full softmax's loss: half precision would round the normaliser."""
    return F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


class ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of a linear decoder, `chunk` rows at a time: the (N, V) logits are never
    held whole, in the forward pass or the backward one (which recomputes each chunk's logits).

        forward:  z = h W^T + b,  nll = sum_i (logsumexp(z_i) - z_i[y_i])   (rows with y_i = PAD skipped)
        backward: dz = g (softmax(z) - onehot(y)),  dh = dz W,  dW = dz^T h,  db = sum_i dz_i

    The same loss and gradients as F.cross_entropy(F.linear(h, W, b), y, reduction="sum"), up to
    the order of float additions. It runs in the weights' dtype, outside autocast.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        hidden = hidden.to(weight.dtype)
        total = torch.zeros((), dtype=weight.dtype, device=weight.device)
        normalisers = []
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.size(0), chunk):
                rows, wanted = hidden[start : start + chunk], targets[start : start + chunk]
                logits = F.linear(rows, weight, bias)  # (chunk, V): the only logits that exist at a time
                lse = logits.logsumexp(dim=-1)
                picked = logits.gather(1, wanted.clamp(min=0).unsqueeze(1)).squeeze(1)
                total += (lse - picked).masked_fill(wanted == PAD, 0.0).sum()
                normalisers.append(lse)
        ctx.save_for_backward(hidden, weight, bias, targets, torch.cat(normalisers))
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        hidden, weight, bias, targets, normalisers = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight, grad_bias = torch.zeros_like(weight), torch.zeros_like(bias)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.size(0), ctx.chunk):
                end = min(start + ctx.chunk, hidden.size(0))
                rows, wanted = hidden[start:end], targets[start:end]
                dlogits = (F.linear(rows, weight, bias) - normalisers[start:end, None]).exp_()  # softmax
                dlogits.scatter_add_(1, wanted.clamp(min=0).unsqueeze(1), torch.full_like(dlogits[:, :1], -1.0))
                dlogits.masked_fill_((wanted == PAD).unsqueeze(1), 0.0).mul_(grad)
                grad_hidden[start:end] = dlogits @ weight
                grad_weight.addmm_(dlogits.t(), rows)
                grad_bias += dlogits.sum(dim=0)
        return grad_hidden, grad_weight, grad_bias, None, None


class Workspace:
    """One (N, V) buffer that the fused loss writes its logits into, kept from step to step.

    Allocating a large logits block afresh each step costs more than filling it: a block that size is
    mapped from the kernel page by page and zeroed, then unmapped when freed (docs/benchmarks.md). The buffer is
    taken by a forward pass and handed back by its backward pass; a second forward before that backward
    (or a graph dropped without one) gets a new buffer, so two live graphs never share it."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def take(self, rows: int, columns: int, like: torch.Tensor) -> torch.Tensor:
        buffer, self.buffer = self.buffer, None
        if (
            buffer is None
            or buffer.numel() < rows * columns
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            buffer = torch.empty(rows * columns, dtype=like.dtype, device=like.device)
        return buffer[: rows * columns].view(rows, columns)

    def give_back(self, view: torch.Tensor) -> None:
        base = view._base if view._base is not None else view
        if self.buffer is None or base.numel() > self.buffer.numel():
            self.buffer = base


class FusedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of a linear decoder with the logits, softmax and gradient in one buffer.

        forward:  z = h W^T  (into the buffer),  then a few rows at a time, in cache: z += b,
                  p = softmax(z) in place,  nll = sum_i (logsumexp(z_i) - z_i[y_i])  (y_i = PAD skipped)
        backward: p_i[y_i] - 1 in place of p_i[y_i],  dh = g p W,  dW = g p^T h,  db = g sum_i p_i

    F.cross_entropy(F.linear(h, W, b), y) writes the (N, V) logits, their log-softmax, a zero-filled
    gradient with one entry per row, and the logits' gradient: four (N, V) tensors and as many passes
    through memory. Here there is one, reused across steps (Workspace). The same loss and gradients,
    up to the order of float additions (tests/test_chunked_loss.py).

    `dtype` is what the matrix products run in: the weights' own, or bfloat16 for a bf16 run, which
    then holds the buffer in bf16 (half the bytes) and does the bias, softmax and normaliser of each
    block in float32, as autocast's linear then cross_entropy would.
    """

    BLOCK = 2**19  # floats per softmax block, 2 MB, within the cache: 15 rows of 33,278 words, 8,065 of 65 chars

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        workspace: Workspace,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        exact = torch.promote_types(weight.dtype, torch.float32)  # the softmax's: float32 at least
        inputs, matrix = hidden.to(dtype), weight.to(dtype)
        rows = hidden.size(0)
        buffer = workspace.take(rows, weight.size(0), matrix)
        with torch.autocast(hidden.device.type, enabled=False):
            torch.mm(inputs, matrix.t(), out=buffer)  # the logits, less the bias
            wanted = targets.clamp(min=0)  # PAD -> 0, masked out below
            picked, normalisers = (torch.empty(rows, dtype=exact, device=hidden.device) for _ in range(2))
            step = max(1, FusedCrossEntropy.BLOCK // weight.size(0))
            for start in range(0, rows, step):
                end = min(start + step, rows)
                stored = buffer[start:end]
                block = stored.to(exact)  # the buffer itself when it is float32
                if bias is not None:
                    block += bias
                picked[start:end] = block.gather(1, wanted[start:end, None]).squeeze(1)
                peak = block.amax(dim=1, keepdim=True)
                total = block.sub_(peak).exp_().sum(dim=1, keepdim=True)
                block.div_(total)  # softmax, in place of the logits
                normalisers[start:end] = (peak + total.log()).squeeze(1)
                if block is not stored:
                    stored.copy_(block)
            scored = targets != PAD
            nll = (normalisers - picked).masked_fill(~scored, 0.0).sum()
            target_probs = (picked - normalisers).exp_()  # p_i[y_i] at the softmax's precision, for backward
        ctx.save_for_backward(inputs, matrix, wanted, scored, target_probs)
        ctx.probs, ctx.workspace = buffer, workspace
        ctx.dtypes = hidden.dtype, weight.dtype, None if bias is None else bias.dtype
        return nll

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None, None, None]:
        inputs, matrix, wanted, scored, target_probs = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        dlogits, ctx.probs = ctx.probs, None  # the softmax, turned into the gradient in place
        if dlogits is None:
            raise RuntimeError(
                "the fused loss's buffer supports one backward pass per forward pass: set "
                "model.fused_loss=false to backpropagate through it twice"
            )
        with torch.autocast(inputs.device.type, enabled=False):
            # p - 1 at each target, rounded once: in a bf16 buffer, p rounded first and then p - 1 would lose
            # the gradient of every confident prediction (bf16 steps by 2^-8 just below 1)
            dlogits[torch.arange(dlogits.size(0), device=dlogits.device), wanted] = (target_probs - 1).to(dlogits.dtype)
            if not bool(scored.all()):
                dlogits[~scored] = 0.0
            # the scale g on the small (N, H) and (V, H) products, not on the (N, V) buffer
            grad_hidden = torch.mm(dlogits, matrix).to(hidden_dtype).mul_(grad)
            grad_weight = torch.mm(dlogits.t(), inputs).to(weight_dtype).mul_(grad)
            grad_bias = None if bias_dtype is None else dlogits.sum(dim=0, dtype=bias_dtype).mul_(grad)
        ctx.workspace.give_back(dlogits)
        return grad_hidden, grad_weight, grad_bias, None, None, None


def fused_cross_entropy(
    hidden: torch.Tensor,
    decoder: nn.Linear,
    targets: torch.Tensor,
    workspace: Workspace,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Summed nll of `targets` (N,) under `decoder` applied to `hidden` (N, H), for training, with the
    matrix products in `dtype` (default: the decoder's); see FusedCrossEntropy."""
    return FusedCrossEntropy.apply(
        hidden, decoder.weight, decoder.bias, targets, workspace, dtype or decoder.weight.dtype
    )


def chunked_cross_entropy(hidden: torch.Tensor, decoder: nn.Linear, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Summed nll of `targets` (N,) under `decoder` applied to `hidden` (N, H), `chunk` rows at a time."""
    return ChunkedCrossEntropy.apply(hidden, decoder.weight, decoder.bias, targets, chunk)
