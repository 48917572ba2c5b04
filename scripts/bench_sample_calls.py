"""The calls one sampled token makes, timed one by one at 1 and 2 torch threads (issue 17, item 6).

For the PTB 2x200 word LSTM that scripts/bench_sample.py measures end to end: the 200 x 10,000 decoder
product in four layouts: one addmm on W^T stored row-major (what `rnnlm sample` ran at any thread count
before 2026-11-30 17:30 UTC, and still runs at one), F.linear, addmv, and the vocabulary split in two
slices for one batched product (baddbmm), which gives each thread a slice (what it runs at two); one
`torch.lstm_cell` layer; the softmax and the float64 running sum of the draw; and, for scale, a sum
over a tensor as large as the decoder (what reading its bytes costs). Microseconds per call: the best
of 5 means over 200 calls, after 20 to warm up.

    python scripts/bench_sample_calls.py
"""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

VOCAB, HIDDEN = 10_000, 200


def per_call(call, calls: int = 200, rounds: int = 5) -> float:
    """Microseconds per call: the best of `rounds` means over `calls` calls (the machine's noise only adds)."""
    for _ in range(20):
        call()
    best = float("inf")
    for _ in range(rounds):
        begin = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - begin) / calls)
    return best * 1e6


def time_calls(threads: int) -> None:
    torch.set_num_threads(threads)
    weight_t = torch.randn(HIDDEN, VOCAB)  # W^T, as LinearLogProbs stores it
    weight = weight_t.t().contiguous()  # W, as nn.Linear stores it
    bias, h = torch.randn(VOCAB), torch.randn(1, HIDDEN)
    halves = torch.stack([weight_t[:, : VOCAB // 2], weight_t[:, VOCAB // 2 :]]).contiguous()  # (2, H, V/2)
    x, state = torch.randn(1, HIDDEN), (torch.randn(1, HIDDEN), torch.randn(1, HIDDEN))
    w_ih, w_hh, b = torch.randn(4 * HIDDEN, HIDDEN), torch.randn(4 * HIDDEN, HIDDEN), torch.randn(4 * HIDDEN)
    calls = {
        "decoder: addmm(b, h, W^T)": lambda: torch.addmm(bias, h, weight_t),
        "decoder: F.linear(h, W, b)": lambda: F.linear(h, weight, bias),
        "decoder: addmv(b, W, h)": lambda: torch.addmv(bias, weight, h[0]),
        "decoder: baddbmm, 2 vocabulary slices": lambda: torch.baddbmm(
            bias.view(2, 1, -1), h.expand(2, 1, HIDDEN), halves
        ),
        "sum over the decoder's bytes": lambda: weight_t.sum(),
        "one layer: torch.lstm_cell": lambda: torch.lstm_cell(x, state, w_ih, w_hh, b, b),
        "softmax over the vocabulary": lambda: torch.softmax(bias[None], -1),
        "running sum in float64": lambda: bias[None].cumsum(-1, dtype=torch.float64),
    }
    for name, call in calls.items():
        print(f"{threads} thread(s)  {name:<40} {per_call(call):8.1f} us")


if __name__ == "__main__":
    for count in (1, 2):
        time_calls(count)
