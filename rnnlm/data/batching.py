"""Batching for stateful truncated BPTT: a token stream becomes B contiguous columns read in windows.

With the alphabet as the stream, B = 4 and bptt = 2 (`TrainBatches`):

    stream  a b c d e f g h i j k l m n o p q r s t u v w x y z
    columns (T = 26 // 4 = 6; y and z do not fit and are dropped)

        col 0  col 1  col 2  col 3
          a      g      m      s      window 0: inputs rows 0-1, targets rows 1-2
          b      h      n      t
          c      i      o      u      window 1: inputs rows 2-3, targets rows 3-4
          d      j      p      v
          e      k      q      w      window 2: inputs row 4,    targets row 5
          f      l      r      x

Each column is one continuous piece of text, so the hidden state left by one window is the right
state to start the next one with: that is why training carries it over (detached) between windows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from rnnlm.ids import PAD  # defined beside the other id conventions; importable from here as before
from rnnlm.runtime import as_tuple


class TrainBatches:
    """Windows over the training stream; iteration resumes where `state_dict` says it stopped.

    With `world_size` > 1 the stream is cut into world_size x B columns and this rank reads
    columns rank*B .. rank*B+B-1, so every rank sees the same number of windows.
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        bptt: int,
        rank: int = 0,
        world_size: int = 1,
        variable: bool = False,
        seed: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        columns = batch_size * world_size
        self.rows = len(ids) // columns  # T
        self.batch_size = batch_size
        self.bptt = bptt
        grid = np.asarray(ids[: self.rows * columns]).reshape(columns, self.rows)  # (B*W, T), a view
        self._grid = grid[rank * batch_size : (rank + 1) * batch_size]  # (B, T)
        self.position = 0  # first row of the next window
        self.variable = variable
        self._random = random.Random(seed)  # window lengths; its state is part of state_dict

    def __len__(self) -> int:
        """Windows per epoch (on average, with variable lengths)."""
        return -(-(self.rows - 1) // self.bptt) if self.rows > 1 else 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (inputs, targets), each (L, B) int64, from the current position to the epoch's end."""
        while self.position < self.rows - 1:
            start = self.position
            length = min(self._next_length(), self.rows - 1 - start)
            self.position = start + length
            yield _window(self._grid, start, length)

    def _next_length(self) -> int:
        """bptt, or with variable lengths a draw around bptt (sometimes bptt / 2) so that window
        boundaries move from epoch to epoch (Merity et al. 2017)."""
        if not self.variable:
            return self.bptt
        base = self.bptt if self._random.random() < 0.95 else self.bptt / 2
        return int(min(max(5, round(self._random.gauss(base, 5))), self.bptt + 40))

    def restart(self) -> None:
        self.position = 0

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "random": self._random.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = int(state["position"])
        if not 0 <= position <= self.rows:
            raise ValueError(f"saved data position {position} is outside this split's {self.rows} rows")
        self.position = position
        if "random" in state:
            self._random.setstate(as_tuple(state["random"]))


def eval_windows(
    ids: np.ndarray, batch_size: int, bptt: int, boundary_id: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windows that score every token of `ids` exactly once.

    The stream is prefixed with `boundary_id` (a line end) so that its first token is predicted
    too, cut into B columns of ceil(N / B) targets, and each column starts with the last token of
    the column before it. The last column is padded with PAD targets, which are not scored. Each
    window is read from `ids` (a memory map) as it is needed, so memory does not grow with N.
    """
    n = len(ids)
    if n == 0:
        return
    batch_size = min(batch_size, n)
    rows = -(-n // batch_size)
    # column j holds stream[j*rows : (j+1)*rows + 1] of stream = [boundary_id, *ids, PAD, ...]:
    # inputs and targets overlap by one token
    column_starts = np.arange(batch_size)[:, None] * rows  # (B, 1)
    for start in range(0, rows, bptt):
        length = min(bptt, rows - start)
        positions = column_starts + start + np.arange(length + 1)  # (B, L+1) places in the stream
        block = np.asarray(ids[np.clip(positions - 1, 0, n - 1)], dtype=np.int64)
        block[positions == 0] = boundary_id
        block[positions > n] = PAD
        window = torch.from_numpy(np.ascontiguousarray(block.T))  # (L+1, B)
        yield window[:-1].clamp(min=0), window[1:]


def _window(grid: np.ndarray, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    block = torch.from_numpy(np.ascontiguousarray(grid[:, start : start + length + 1].T, dtype=np.int64))
    return block[:-1], block[1:]  # (L, B) each
