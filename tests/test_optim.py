"""rnnlm/optim.py against hand-computed numbers: each optimizer's first step, each schedule's rate at given
steps and epochs, and NT-ASGD's running mean of the weights."""

import math

import pytest
import torch
from torch import nn

from rnnlm.config import load_config
from rnnlm.optim import Averager, Schedule, build_optimizer


def optim_config(*overrides):
    return load_config(None, list(overrides)).optim


def one_weight(value=2.0):
    """A model with one weight, [value, -value]."""
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[value, -value]]))
    return model


def step_with_gradient(model, optimizer, gradient):
    model.weight.grad = torch.tensor([gradient], dtype=torch.float32)
    optimizer.step()
    return model.weight.detach()[0].tolist()


@pytest.mark.parametrize("name", ["sgd", "ntasgd"])
def test_sgd_steps_against_the_gradient_plus_weight_decay(name):
    model = one_weight(2.0)
    optimizer = build_optimizer(model.parameters(), optim_config(f"optim.name={name}", "optim.lr=0.5",
                                                                  "optim.weight_decay=0.1"))
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
    # theta - lr * (grad + wd * theta): 2 - 0.5 * (1 + 0.2) = 1.4; -2 - 0.5 * (0 - 0.2) = -1.9
    assert step_with_gradient(model, optimizer, [1.0, 0.0]) == pytest.approx([1.4, -1.9])


def test_sgd_momentum_carries_the_previous_step():
    model = one_weight(2.0)
    optimizer = build_optimizer(model.parameters(), optim_config("optim.lr=0.5", "optim.momentum=0.9"))
    step_with_gradient(model, optimizer, [1.0, 1.0])  # buffer 1: 2 - 0.5 = 1.5
    # buffer 0.9 * 1 + 1 = 1.9: 1.5 - 0.5 * 1.9 = 0.55
    assert step_with_gradient(model, optimizer, [1.0, 1.0])[0] == pytest.approx(0.55)


def test_adamw_decays_the_weights_apart_from_the_gradient_and_adam_through_it():
    # Adam's first step is lr times the sign of the gradient it sees (0 for a zero gradient)
    decoupled = one_weight(2.0)
    adamw = build_optimizer(decoupled.parameters(), optim_config("optim.name=adamw", "optim.lr=0.1",
                                                                 "optim.weight_decay=0.5"))
    assert type(adamw) is torch.optim.AdamW
    # AdamW: theta * (1 - lr * wd) - lr * sign(grad) (Loshchilov & Hutter 2019): 2 * 0.95 - 0.1, -2 * 0.95 - 0.1
    assert step_with_gradient(decoupled, adamw, [1.0, 1.0]) == pytest.approx([1.8, -2.0], abs=1e-6)
    coupled = one_weight(2.0)
    adam = build_optimizer(coupled.parameters(), optim_config("optim.name=adam", "optim.lr=0.1",
                                                              "optim.weight_decay=0.5"))
    assert type(adam) is torch.optim.Adam
    # Adam: the gradient becomes grad + wd * theta = [2, 0]: 2 - 0.1, and no step for the second weight
    assert step_with_gradient(coupled, adam, [1.0, 1.0]) == pytest.approx([1.9, -2.0], abs=1e-6)


def rates(schedule, optimizer):
    """The schedule's rate, checked to be the optimizer's."""
    assert all(group["lr"] == schedule.lr for group in optimizer.param_groups)
    return schedule.lr


def schedule_for(*overrides, total_steps=0):
    config = optim_config(*overrides)
    optimizer = build_optimizer(one_weight().parameters(), config)
    return Schedule(optimizer, config, total_steps), optimizer


def test_plateau_divides_the_rate_when_validation_does_not_improve_on_its_best():
    schedule, optimizer = schedule_for("optim.lr=8.0", "optim.schedule=plateau", "optim.lr_decay=0.25")
    seen = []
    for loss in (5.0, 4.0, 4.5, 3.9, 3.9, 4.0):  # not better than the best (the last does not count) decays
        schedule.validated(loss)
        seen.append(rates(schedule, optimizer))
    assert seen == [8.0, 8.0, 2.0, 2.0, 0.5, 0.125]
    assert schedule.best == 3.9


def test_step_keeps_the_rate_until_decay_start_then_multiplies_each_epoch():
    schedule, optimizer = schedule_for("optim.lr=1.0", "optim.schedule=step", "optim.lr_decay=0.5",
                                          "optim.decay_start=2")
    seen = []
    for epoch in range(1, 6):
        schedule.epoch_start(epoch)
        schedule.step_start(epoch * 10)  # steps do not move it
        schedule.validated(10.0 - epoch)
        seen.append(rates(schedule, optimizer))
    assert seen == [1.0, 1.0, 0.5, 0.25, 0.125]


def test_cosine_warms_up_linearly_then_follows_half_a_cosine_to_min_lr():
    schedule, optimizer = schedule_for("optim.lr=1.0", "optim.schedule=cosine", "optim.warmup_steps=4",
                                          "optim.min_lr=0.1", total_steps=14)
    assert rates(schedule, optimizer) == 0.25  # set at construction: step 1 runs at 1/4 of the rate
    expected = {0: 0.25, 1: 0.5, 3: 1.0, 4: 1.0, 9: 0.55, 14: 0.1, 20: 0.1}
    for step, lr in expected.items():
        schedule.step_start(step)
        assert rates(schedule, optimizer) == pytest.approx(lr), step
    schedule.step_start(6)  # a fifth of the way down: 0.1 + 0.9 * (1 + cos(pi / 5)) / 2
    assert schedule.lr == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.2)))
    schedule.validated(1.0)
    schedule.validated(2.0)  # only plateau listens to validation
    assert schedule.lr == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.2)))


def test_cosine_without_warmup_starts_at_the_full_rate():
    schedule, _ = schedule_for("optim.lr=0.5", "optim.schedule=cosine", total_steps=10)
    assert schedule.lr == 0.5
    schedule.step_start(5)
    assert schedule.lr == pytest.approx(0.25)


def test_constant_never_changes():
    schedule, optimizer = schedule_for("optim.lr=0.3", "optim.schedule=constant")
    for epoch in (1, 2, 3):
        schedule.epoch_start(epoch)
        schedule.step_start(epoch)
        schedule.validated(float(epoch))  # always worse
    assert rates(schedule, optimizer) == 0.3


def test_scaled_sets_a_one_step_rate_and_restores_it_even_after_an_error():
    schedule, optimizer = schedule_for("optim.lr=2.0")
    with schedule.scaled(0.75):
        assert optimizer.param_groups[0]["lr"] == 1.5 and schedule.lr == 2.0  # the logged rate is unscaled
    assert rates(schedule, optimizer) == 2.0
    with pytest.raises(ValueError), schedule.scaled(1.25):
        raise ValueError
    assert rates(schedule, optimizer) == 2.0
    with schedule.scaled(1.0):
        assert optimizer.param_groups[0]["lr"] == 2.0


def test_a_schedule_s_state_round_trips_into_the_optimizer():
    schedule, _ = schedule_for("optim.lr=8.0")
    schedule.validated(3.0)
    schedule.validated(4.0)
    fresh, optimizer = schedule_for("optim.lr=8.0")
    fresh.load_state_dict(schedule.state_dict())
    assert (fresh.best, rates(fresh, optimizer)) == (3.0, 2.0)


def test_ntasgd_starts_averaging_once_validation_is_worse_than_the_best_before_the_last_nonmono():
    averager = Averager(one_weight(), optim_config("optim.name=ntasgd", "optim.nonmono=1"))
    # at each check, `earlier` is the history but its last nonmono + 1 entries
    assert [averager.validated(loss) for loss in (3.0, 2.0, 2.5)] == [False, False, False]  # 2.5 < 3.0
    assert not averager.active
    assert averager.validated(2.1) is True  # 2.1 > min(3.0, 2.0)
    assert averager.active and averager.count == 1
    assert averager.validated(9.0) is False  # it starts once


def test_without_ntasgd_nothing_is_ever_averaged():
    averager = Averager(one_weight(), optim_config("optim.name=sgd", "optim.nonmono=1"))
    assert not any(averager.validated(loss) for loss in (1.0, 2.0, 3.0, 4.0))
    averager.update()
    assert not averager.active and averager.count == 0


def set_weight(model, value):
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[value, -value]]))


def test_the_average_is_the_mean_of_the_weights_from_the_trigger_on_and_applied_only_inside_the_block():
    model = one_weight(1.0)
    averager = Averager(model, optim_config("optim.name=ntasgd", "optim.nonmono=1"))
    averager.update()  # not triggered yet: ignored
    averager.validated(1.0)
    averager.validated(0.5)
    assert averager.validated(2.0)  # the weights now, 1.0, are the first term
    for value in (2.0, 6.0):
        set_weight(model, value)
        averager.update()
    assert averager.count == 3
    with averager.applied():
        assert model.weight.tolist() == [[3.0, -3.0]]  # (1 + 2 + 6) / 3
    assert model.weight.tolist() == [[6.0, -6.0]]
    with pytest.raises(RuntimeError), averager.applied():
        raise RuntimeError
    assert model.weight.tolist() == [[6.0, -6.0]]


def test_the_averager_s_state_round_trips_with_and_without_an_average():
    model = one_weight(4.0)
    averager = Averager(model, optim_config("optim.name=ntasgd", "optim.nonmono=1"))
    for loss in (1.0, 0.5, 2.0):
        averager.validated(loss)
    restored = Averager(one_weight(0.0), optim_config("optim.name=ntasgd", "optim.nonmono=1"))
    restored.load_state_dict({**averager.state_dict(), "average": [torch.tensor([[4.0, -4.0]])]})
    assert (restored.history, restored.count, restored.active) == ([1.0, 0.5, 2.0], 1, True)
    set_weight(restored.model, 8.0)
    restored.update()
    with restored.applied():
        assert restored.model.weight.tolist() == [[6.0, -6.0]]
    restored.load_state_dict({"history": [], "count": 0, "average": None})
    assert not restored.active
