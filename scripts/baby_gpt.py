"""A baby GPT in plain PyTorch: the transformer baseline that rnnlm's recurrent models are timed against.

The shape of nanoGPT's CPU recipe for tinyshakespeare (written here from the GPT-2 design, no code taken
from nanoGPT): 4 pre-LayerNorm blocks, 4 heads, width 128, block 64, causal self-attention through
`scaled_dot_product_attention(is_causal=True)`, a GELU MLP 4x as wide, learned position embeddings, the
output head tied to the token embedding (Press & Wolf 2017), no dropout by default (--dropout: on the
embeddings, the attention weights and each residual branch, as GPT-2). Trained on random windows of the
training text with AdamW (betas 0.9, 0.99, weight decay 0.1 on matrices only), gradients clipped at 1, a
linear warm-up over the first 5% and a cosine decay to lr/10 over the rest of the wall-clock budget (the fraction of
the budget spent, not a step count), so a 2-minute run is a complete run. Its score is the mean NLL per character in
nats over the whole validation split, every character scored once, by sliding windows of the block size
with a stride of half a block: each character after the first window has at least half a block (32) of
context. The first character is predicted after a newline, as rnnlm scores a split.

    python scripts/baby_gpt.py --train train.txt --valid valid.txt --budget 120
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    width: int = 128
    dropout: float = 0.0  # on the embeddings, the attention weights and each residual branch's output


def parameter_count(c: GPTConfig) -> int:
    """Per block: attention 4 d^2 + 4 d, MLP 8 d^2 + 5 d, two LayerNorms 4 d; then the final LayerNorm,
    the token embedding (which is also the head) and the position embedding."""
    d = c.width
    return c.num_layers * (12 * d * d + 13 * d) + 2 * d + c.vocab_size * d + c.block_size * d


class Block(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x)): the pre-LayerNorm residual block of GPT-2."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.num_heads, self.dropout = c.num_heads, c.dropout
        self.drop = nn.Dropout(c.dropout)
        self.norm1, self.norm2 = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.qkv = nn.Linear(c.width, 3 * c.width)
        self.attn_out = nn.Linear(c.width, c.width)
        self.mlp = nn.Sequential(nn.Linear(c.width, 4 * c.width), nn.GELU(), nn.Linear(4 * c.width, c.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(D, dim=2)  # (B, T, D) each
        q, k, v = (t.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, heads, T, D / heads)
        x = x + self.drop(self.attn_out(y.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.mlp(self.norm2(x)))


class BabyGPT(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.config = c
        self.token = nn.Embedding(c.vocab_size, c.width)
        self.position = nn.Embedding(c.block_size, c.width)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.width)
        self.apply(self._init)
        for block in self.blocks:  # residual branches scaled down with depth (GPT-2, Radford et al. 2019)
            for layer in (block.attn_out, block.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * c.num_layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for ids (B, T), T <= block_size."""
        positions = torch.arange(ids.size(1), device=ids.device)
        x = self.drop(self.token(ids) + self.position(positions))  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.token.weight.t()  # the tied head


def encode_files(train_path: Path, valid_path: Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Character ids: the training text's characters sorted, one id past them for any other (as rnnlm's
    char tokenizer), the validation split preceded by a newline to condition its first character on."""
    train_text = train_path.read_text(encoding="utf-8")
    valid_text = "\n" + valid_path.read_text(encoding="utf-8")
    index = {ch: i for i, ch in enumerate(sorted(set(train_text)))}
    unk = len(index)

    def encode(text: str) -> torch.Tensor:
        return torch.tensor([index.get(ch, unk) for ch in text], dtype=torch.long)

    return encode(train_text), encode(valid_text), unk + 1


@torch.no_grad()
def evaluate(model: BabyGPT, ids: torch.Tensor, stride: int | None = None, batch_size: int = 256) -> tuple[float, int]:
    """(mean NLL in nats, characters scored) over ids[1:], each scored once.

    Windows of block_size start every `stride` (default half a block); the first window scores all its
    targets, every later one only its last `stride`, so each of those has block_size - stride of context.
    """
    block = model.config.block_size
    stride = stride or block // 2
    model.eval()
    targets_total = len(ids) - 1
    starts = list(range(0, max(targets_total - block, 0) + 1, stride))
    if starts[-1] + block < targets_total:
        starts.append(targets_total - block)  # the tail: a last window flush with the end
    total, scored, done = 0.0, 0, 0  # done: targets ids[1:done+1] already scored
    for first in range(0, len(starts), batch_size):
        group = starts[first : first + batch_size]
        windows = torch.stack([ids[s : s + block + 1] for s in group])  # (B, block + 1)
        losses = F.cross_entropy(model(windows[:, :-1]).transpose(1, 2), windows[:, 1:], reduction="none")
        for row, s in enumerate(group):
            keep = s + block - done  # the targets of this window not scored yet: its last `keep`
            total += losses[row, block - keep :].double().sum().item()
            scored += keep
            done = s + block
    model.train()
    assert scored == targets_total, (scored, targets_total)
    return total / scored, scored


def learning_rate(fraction: float, lr: float, warmup: float = 0.05) -> float:
    """Linear warm-up over the first `warmup` of the budget (nanoGPT's 100 of 2,000 steps), then cosine from lr
    to lr/10 over the rest: `fraction` is the share of the budget spent."""
    if fraction < warmup:
        return lr * max(fraction, 1e-3) / warmup
    progress = min((fraction - warmup) / (1 - warmup), 1.0)
    return lr / 10 + 0.5 * (lr - lr / 10) * (1 + math.cos(math.pi * progress))


def train(
    model: BabyGPT,
    ids: torch.Tensor,
    *,
    budget: float,
    lr: float,
    batch_size: int = 12,
    max_steps: int = 0,
    seed: int = 1234,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Train until `budget` seconds of `clock` (or `max_steps`) have passed: steps, wall seconds, the clock's
    seconds and the last training loss. `time.process_time` as the clock budgets CPU time instead of wall time."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99)
    )
    generator = torch.Generator().manual_seed(seed)
    block, step, loss = model.config.block_size, 0, torch.tensor(float("nan"))
    begin, wall = clock(), time.perf_counter()
    while True:
        elapsed = clock() - begin
        if (budget and elapsed >= budget) or (max_steps and step >= max_steps):
            break
        fraction = elapsed / budget if budget else step / max_steps
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(fraction, lr)
        starts = torch.randint(len(ids) - block - 1, (batch_size,), generator=generator)
        windows = torch.stack([ids[s : s + block + 1] for s in starts.tolist()])  # (B, block + 1)
        loss = F.cross_entropy(model(windows[:, :-1]).transpose(1, 2), windows[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
    seconds = time.perf_counter() - wall
    return {
        "steps": step,
        "train_seconds": seconds,
        "clock_seconds": clock() - begin,
        "train_loss": loss.item(),
        "tokens_per_second": step * batch_size * block / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, required=True, help="training text")
    parser.add_argument("--valid", type=Path, required=True, help="validation text, scored whole")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds of training (0: none)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="what the budget counts")
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: the budget only)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    if not (args.budget or args.max_steps):
        parser.error("give --budget or --max-steps")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_ids, valid_ids, vocab = encode_files(args.train, args.valid)
    config = GPTConfig(vocab, args.block, args.layers, args.heads, args.width, args.dropout)
    model = BabyGPT(config)
    result = train(
        model,
        train_ids,
        budget=args.budget,
        lr=args.lr,
        batch_size=args.batch,
        max_steps=args.max_steps,
        seed=args.seed,
        clock=time.process_time if args.clock == "cpu" else time.perf_counter,
    )
    tick = time.perf_counter()
    loss, scored = evaluate(model, valid_ids)
    result.update(
        model="gpt",
        config=asdict(config),
        parameters=sum(p.numel() for p in model.parameters()),
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        threads=args.threads,
        budget=args.budget,
        val_loss=loss,
        val_chars=scored,
        eval_seconds=time.perf_counter() - tick,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
