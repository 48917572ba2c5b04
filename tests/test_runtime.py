"""rnnlm/runtime.py: device names, precision refusals, threads, seeds and RNG states, and stop signals."""

import contextlib
import os
import random
import signal
import threading

import pytest
import torch

from rnnlm import runtime
from rnnlm.errors import UsageError


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch, no_accelerator):
    assert runtime.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "cpu:0", ""])
def test_an_unknown_device_name_is_a_usage_error_listing_the_names(name):
    with pytest.raises(UsageError, match=r"use auto, cpu, cuda, cuda:N or mps"):
        runtime.resolve_device(name)


def test_a_device_this_machine_lacks_is_a_usage_error(no_accelerator):
    with pytest.raises(UsageError, match=r"device 'cuda:1' was asked for, but this machine has no usable CUDA GPU"):
        runtime.resolve_device("cuda:1")
    with pytest.raises(UsageError, match=r"MPS is not available on this machine"):
        runtime.resolve_device("mps")
    assert runtime.resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_index_past_the_last_is_refused_naming_the_count(two_gpus):
    assert runtime.resolve_device("cuda") == torch.device("cuda")
    assert runtime.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UsageError, match=r"device 'cuda:2' does not exist: this machine has 2 GPU\(s\)"):
        runtime.resolve_device("cuda:2")


def test_autocast_is_nothing_for_fp32_and_torch_s_autocast_for_bf16():
    cpu = torch.device("cpu")
    assert isinstance(runtime.autocast(cpu, "fp32"), contextlib.nullcontext)
    with runtime.autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("precision, device, impl, cell, message", [
    ("fp16", "cpu", "fused", "gru", "oneDNN has no fp16 LSTM"),
    ("bf16", "mps", "reference", "lstm", "train.precision=bf16 is not supported on mps"),
    ("fp16", "mps", "reference", "gru", "train.precision=fp16 is not supported on mps"),
])
def test_precisions_the_device_cannot_run_are_refused(precision, device, impl, cell, message):
    with pytest.raises(UsageError, match=message):
        runtime.check_precision(precision, torch.device(device), impl, cell)


@pytest.mark.parametrize("precision, device, impl, cell", [
    ("fp32", "mps", "fused", "lstm"), ("fp16", "cpu", "reference", "lstm"), ("bf16", "cpu", "fused", "gru"),
    ("bf16", "cpu", "reference", "lstm"), ("fp16", "cuda", "fused", "lstm"), ("bf16", "cuda", "fused", "lstm"),
])
def test_precisions_the_device_can_run_pass(precision, device, impl, cell, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16_lstm", lambda: False)  # bf16 runs the fused GRU on any CPU
    runtime.check_precision(precision, torch.device(device), impl, cell)


def test_the_bf16_probe_answers_a_bool_once():
    runtime.cpu_has_bf16_lstm.cache_clear()
    answer = runtime.cpu_has_bf16_lstm()
    assert isinstance(answer, bool)
    assert runtime.cpu_has_bf16_lstm() is answer and runtime.cpu_has_bf16_lstm.cache_info().hits == 1


def test_configure_threads_sets_the_count_and_zero_keeps_torch_s():
    before = torch.get_num_threads()
    try:
        runtime.configure_threads(2)
        assert torch.get_num_threads() == 2
        runtime.configure_threads(0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def draws():
    return random.random(), torch.rand(3).tolist(), torch.randint(0, 1000, (4,)).tolist()


def test_the_same_seed_gives_the_same_draws_and_another_seed_others():
    runtime.seed_everything(7)
    first = draws()
    runtime.seed_everything(7)
    assert draws() == first
    runtime.seed_everything(8)
    other = draws()
    assert other[0] != first[0] and other[1] != first[1]


def as_saved(value):
    """What a checkpoint gives back for a state: tuples turned into lists, as after a JSON-like round trip."""
    if isinstance(value, dict):
        return {k: as_saved(v) for k, v in value.items()}
    return [as_saved(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_a_saved_rng_state_replays_the_same_draws_even_with_its_tuples_turned_into_lists():
    runtime.seed_everything(3)
    draws()
    state = runtime.rng_state()
    assert set(state) == {"python", "torch"}  # no CUDA state on a machine without CUDA
    expected = draws()
    runtime.seed_everything(99)
    runtime.set_rng_state(as_saved(state))
    assert draws() == expected


def test_as_tuple_turns_nested_lists_into_tuples_and_leaves_other_values():
    assert runtime.as_tuple([1, [2, [3, "a"]], (4,)]) == (1, (2, (3, "a")), (4,))
    assert runtime.as_tuple("abc") == "abc" and runtime.as_tuple(5) == 5


def test_cuda_rng_states_are_restored_only_onto_as_many_gpus(two_gpus, monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = {**runtime.rng_state(), "cuda": [torch.zeros(2, dtype=torch.uint8)] * 2}
    runtime.set_rng_state(state)
    assert len(restored) == 1 and len(restored[0]) == 2
    runtime.set_rng_state({**state, "cuda": [torch.zeros(2, dtype=torch.uint8)] * 3})  # saved on 3 GPUs
    assert len(restored) == 1


def test_a_first_signal_asks_to_stop_a_second_stops_at_once_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    messages = []
    with runtime.StopSignals(messages.append) as signals:
        assert signals.caught is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.caught == signal.SIGTERM
        assert len(messages) == 1 and messages[0].startswith("\nSIGTERM: finishing this step and saving")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signals.caught == signal.SIGTERM  # the first one is the one reported
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_outside_the_main_thread_stop_signals_leave_the_handlers_alone():
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def enter():
        with runtime.StopSignals(seen.append) as signals:
            seen.append(signals.caught)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == [None] and signal.getsignal(signal.SIGINT) is before
