"""Batching: the exact windows of the module diagram, resumable iteration, rank shards, eval coverage."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlm.data.batching import PAD, TrainBatches, eval_windows

ALPHABET = np.arange(26, dtype=np.int64)  # a..z as ids 0..25


def ids_of(letters: str) -> list[int]:
    return [string.ascii_lowercase.index(c) for c in letters]


def rows_of(*rows: str) -> torch.Tensor:
    """A (L, B) tensor from one string per row, one letter per column."""
    return torch.tensor([ids_of(row) for row in rows], dtype=torch.int64)


# The diagram in rnnlm/data/batching.py, window by window: columns a-f, g-l, m-r, s-x.
DIAGRAM_WINDOWS = [
    (rows_of("agms", "bhnt"), rows_of("bhnt", "ciou")),
    (rows_of("ciou", "djpv"), rows_of("djpv", "ekqw")),
    (rows_of("ekqw"), rows_of("flrx")),
]


def assert_windows_equal(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for (inputs, targets), (want_inputs, want_targets) in zip(actual, expected):
        assert inputs.dtype == torch.int64 and targets.dtype == torch.int64
        assert torch.equal(inputs, want_inputs), (inputs, want_inputs)
        assert torch.equal(targets, want_targets), (targets, want_targets)


def test_train_batches_give_exactly_the_diagram_windows() -> None:
    batches = TrainBatches(ALPHABET, batch_size=4, bptt=2)
    assert batches.rows == 6  # y and z do not fit
    windows = list(batches)
    assert_windows_equal(windows, DIAGRAM_WINDOWS)
    assert [tuple(w[0].shape) for w in windows] == [(2, 4), (2, 4), (1, 4)]


def test_train_batches_accept_a_uint16_memmap_like_stream() -> None:
    windows = list(TrainBatches(ALPHABET.astype(np.uint16), batch_size=4, bptt=2))
    assert_windows_equal(windows, DIAGRAM_WINDOWS)


def test_train_batches_len_counts_windows_per_epoch() -> None:
    assert len(TrainBatches(ALPHABET, batch_size=4, bptt=2)) == 3
    assert len(TrainBatches(ALPHABET, batch_size=4, bptt=5)) == 1  # rows 6: one window of 5
    assert len(TrainBatches(ALPHABET, batch_size=4, bptt=100)) == 1
    assert len(TrainBatches(ALPHABET, batch_size=2, bptt=3)) == 4  # rows 13: 12 targets / 3
    assert len(TrainBatches(ALPHABET, batch_size=13, bptt=1)) == 1  # rows 2
    assert len(TrainBatches(ALPHABET, batch_size=26, bptt=1)) == 0  # one row: nothing to predict
    assert len(TrainBatches(ALPHABET, batch_size=30, bptt=1)) == 0  # fewer tokens than columns
    for batch_size, bptt in [(1, 1), (1, 7), (2, 3), (3, 4), (4, 2), (5, 5), (26, 1), (30, 2)]:
        batches = TrainBatches(ALPHABET, batch_size, bptt)
        assert len(list(batches)) == len(batches)


def test_train_batches_cover_each_column_once_in_order() -> None:
    batches = TrainBatches(ALPHABET, batch_size=3, bptt=3)  # rows 8, drops y and z
    windows = list(batches)
    inputs = torch.cat([w[0] for w in windows])
    targets = torch.cat([w[1] for w in windows])
    assert inputs.T.tolist() == [list(range(c * 8, c * 8 + 7)) for c in range(3)]
    assert targets.T.tolist() == [list(range(c * 8 + 1, c * 8 + 8)) for c in range(3)]


def test_train_batches_resume_mid_epoch_yields_the_remaining_windows() -> None:
    first = TrainBatches(ALPHABET, batch_size=4, bptt=2)
    iterator = iter(first)
    assert_windows_equal([next(iterator)], DIAGRAM_WINDOWS[:1])
    state = first.state_dict()
    assert state["position"] == 2

    resumed = TrainBatches(ALPHABET, batch_size=4, bptt=2)
    resumed.load_state_dict(state)
    assert_windows_equal(list(resumed), DIAGRAM_WINDOWS[1:])
    # the interrupted iterator continues the same way
    assert_windows_equal(list(iterator), DIAGRAM_WINDOWS[1:])


def test_train_batches_state_after_epoch_and_restart() -> None:
    batches = TrainBatches(ALPHABET, batch_size=4, bptt=2)
    list(batches)
    assert list(batches) == []  # the epoch is over until restart
    resumed = TrainBatches(ALPHABET, batch_size=4, bptt=2)
    resumed.load_state_dict(batches.state_dict())
    assert list(resumed) == []
    batches.restart()
    assert batches.state_dict()["position"] == 0
    assert_windows_equal(list(batches), DIAGRAM_WINDOWS)


@pytest.mark.parametrize("batch_size,bptt", [(2, 2), (3, 1), (1, 4), (2, 5)])
def test_rank_shards_union_equals_one_process_with_all_columns(batch_size: int, bptt: int) -> None:
    world_size = 2
    ranks = [TrainBatches(ALPHABET, batch_size, bptt, rank=r, world_size=world_size) for r in range(world_size)]
    single = TrainBatches(ALPHABET, batch_size * world_size, bptt)
    assert len(ranks[0]) == len(ranks[1]) == len(single) > 0
    single_windows = list(single)
    rank_windows = [list(r) for r in ranks]
    for step, (inputs, targets) in enumerate(single_windows):
        parts = [rank_windows[r][step] for r in range(world_size)]
        for r, (rank_inputs, rank_targets) in enumerate(parts):
            assert rank_inputs.shape == (inputs.shape[0], batch_size)
            # rank r reads columns r*B .. r*B+B-1 of the single-process grid
            assert torch.equal(rank_inputs, inputs[:, r * batch_size:(r + 1) * batch_size])
            assert torch.equal(rank_targets, targets[:, r * batch_size:(r + 1) * batch_size])
        assert torch.equal(torch.cat([p[0] for p in parts], dim=1), inputs)
        assert torch.equal(torch.cat([p[1] for p in parts], dim=1), targets)


def test_rank_shards_on_the_alphabet() -> None:
    # 26 // (2 * 2) = 6 rows: the same grid as the diagram, split between two ranks
    rank0 = list(TrainBatches(ALPHABET, batch_size=2, bptt=2, rank=0, world_size=2))
    rank1 = list(TrainBatches(ALPHABET, batch_size=2, bptt=2, rank=1, world_size=2))
    assert_windows_equal(rank0, [(w[0][:, :2], w[1][:, :2]) for w in DIAGRAM_WINDOWS])
    assert_windows_equal(rank1, [(w[0][:, 2:], w[1][:, 2:]) for w in DIAGRAM_WINDOWS])
    assert rank0[0][0].tolist() == [ids_of("ag"), ids_of("bh")]
    assert rank1[0][0].tolist() == [ids_of("ms"), ids_of("nt")]


# ---- evaluation ----


def collect_eval(ids: np.ndarray, batch_size: int, bptt: int, boundary_id: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    windows = list(eval_windows(ids, batch_size, bptt, boundary_id))
    inputs = torch.cat([w[0] for w in windows]) if windows else torch.zeros(0, 0, dtype=torch.int64)
    targets = torch.cat([w[1] for w in windows]) if windows else torch.zeros(0, 0, dtype=torch.int64)
    return windows, inputs, targets


EVAL_CASES = [
    (26, 4, 2), (26, 4, 3), (26, 1, 5), (26, 26, 1), (26, 5, 100),
    (3, 8, 2),  # N < B
    (1, 4, 1),
    (5, 4, 1),  # the last column holds only padding
    (9, 4, 2), (10, 3, 4), (100, 7, 6), (17, 2, 3),
]


@pytest.mark.parametrize("n,batch_size,bptt", EVAL_CASES)
def test_eval_windows_score_every_token_exactly_once(n: int, batch_size: int, bptt: int) -> None:
    ids = (np.arange(n, dtype=np.int64) * 7 + 3) % 50 + 1  # ids 1..50, never the boundary 0
    boundary = 0
    windows, inputs, targets = collect_eval(ids, batch_size, bptt, boundary)
    columns = targets.shape[1]
    assert columns == min(batch_size, n)
    for window_inputs, window_targets in windows:
        assert window_inputs.shape == window_targets.shape
        assert window_inputs.shape[0] <= bptt
        assert window_inputs.dtype == torch.int64 and window_targets.dtype == torch.int64
        assert int(window_inputs.min()) >= 0  # padding never reaches the embedding as -1
    scored = [int(t) for column in targets.T for t in column if int(t) != PAD]
    assert scored == ids.tolist()
    # padding only trails: once a column is padded, it stays padded, and so do later columns
    flat = targets.T.reshape(-1).tolist()
    assert flat[:n] == ids.tolist()
    assert all(t == PAD for t in flat[n:])


@pytest.mark.parametrize("n,batch_size,bptt", EVAL_CASES)
def test_eval_windows_inputs_continue_the_stream(n: int, batch_size: int, bptt: int) -> None:
    ids = np.arange(1, n + 1, dtype=np.int64)
    boundary = 0
    _, inputs, targets = collect_eval(ids, batch_size, bptt, boundary)
    assert int(inputs[0, 0]) == boundary  # the first token is predicted from a line end
    for column in range(inputs.shape[1]):
        # within a column each input is the previous target (padding is fed as id 0, never scored)
        assert inputs[1:, column].tolist() == targets[:-1, column].clamp(min=0).tolist()
        if column > 0 and int(targets[0, column]) != PAD:
            # each column starts with the last token of the column before it
            assert int(inputs[0, column]) == int(targets[-1, column - 1])


def test_eval_windows_on_the_alphabet() -> None:
    boundary = 99
    windows = list(eval_windows(ALPHABET, batch_size=4, bptt=3, boundary_id=boundary))
    # 26 tokens in 4 columns of 7 targets: a-g, h-n, o-u, v-z + 2 pads
    inputs = torch.cat([w[0] for w in windows])
    targets = torch.cat([w[1] for w in windows])
    assert [tuple(w[0].shape) for w in windows] == [(3, 4), (3, 4), (1, 4)]
    assert targets.T.tolist() == [
        ids_of("abcdefg"), ids_of("hijklmn"), ids_of("opqrstu"), ids_of("vwxyz") + [PAD, PAD],
    ]
    assert inputs.T.tolist()[0] == [boundary] + ids_of("abcdef")
    assert inputs.T.tolist()[1] == ids_of("ghijklm")
    assert inputs.T.tolist()[3][:6] == ids_of("uvwxyz")


def test_eval_windows_of_an_empty_stream_is_empty() -> None:
    assert list(eval_windows(np.zeros(0, dtype=np.int64), 4, 2, 0)) == []


def test_eval_windows_accept_uint16_ids() -> None:
    ids = np.arange(1, 11, dtype=np.uint16)
    _, _, targets = collect_eval(ids, 3, 2, 0)
    assert [int(t) for column in targets.T for t in column if int(t) != PAD] == list(range(1, 11))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 60), st.integers(1, 12), st.integers(1, 9))
def test_eval_windows_coverage_property(n: int, batch_size: int, bptt: int) -> None:
    ids = np.arange(1, n + 1, dtype=np.int64)
    _, inputs, targets = collect_eval(ids, batch_size, bptt, 0)
    assert [int(t) for column in targets.T for t in column if int(t) != PAD] == ids.tolist()
    assert int(inputs[0, 0]) == 0
    # every scored target's input is the token just before it in the stream (the boundary for the first)
    scored = targets != PAD
    assert torch.equal(inputs[scored], targets[scored] - 1)
