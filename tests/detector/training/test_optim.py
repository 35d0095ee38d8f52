"""The learning-rate schedule, the parameter groups and the default rates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detector.training.optim import (LRSchedule, build_optimizer, default_lr, default_warmup_iters, set_lr,
                                     steps_in_iterations)


def test_warmup_then_steps_at_two_thirds_and_eight_ninths() -> None:
    s = LRSchedule(base_lr=0.02, total_iters=900, warmup_iters=100)
    assert s.step_iters() == (600, 800)
    assert s.lr_at(0) == pytest.approx(0.02 * 1e-3)  # warm-up starts at warmup_factor x base
    assert s.lr_at(50) == pytest.approx(0.02 * (1e-3 * 0.5 + 0.5))  # linear in between
    assert s.lr_at(99) == pytest.approx(0.02 * (1e-3 * 0.01 + 0.99))
    assert s.lr_at(100) == pytest.approx(0.02)
    assert s.lr_at(599) == pytest.approx(0.02)
    assert s.lr_at(600) == pytest.approx(0.002)
    assert s.lr_at(799) == pytest.approx(0.002)
    assert s.lr_at(800) == pytest.approx(0.0002)
    assert s.lr_at(899) == pytest.approx(0.0002)


def test_warmup_rises_monotonically() -> None:
    s = LRSchedule(base_lr=0.1, total_iters=50, warmup_iters=10)
    rates = [s.lr_at(i) for i in range(11)]
    assert all(a < b for a, b in zip(rates, rates[1:]))


def test_cosine_halves_at_the_middle_and_ends_at_zero() -> None:
    s = LRSchedule(base_lr=0.01, total_iters=1000, warmup_iters=0, kind="cosine")
    assert s.lr_at(0) == pytest.approx(0.01)
    assert s.lr_at(500) == pytest.approx(0.005)
    assert s.lr_at(1000) == pytest.approx(0.0, abs=1e-12)
    assert s.lr_at(250) == pytest.approx(0.005 * (1 + math.cos(math.pi / 4)))


def test_cosine_is_multiplied_by_the_warmup() -> None:
    s = LRSchedule(base_lr=0.01, total_iters=100, warmup_iters=10, kind="cosine")
    assert s.lr_at(5) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.05)) * (1e-3 * 0.5 + 0.5))


def test_lr_steps_in_epochs_are_torchvisions_recipe_in_iterations() -> None:
    """torchvision's Mask R-CNN recipe: 26 epochs, x0.1 after epochs 16 and 22 (here 10 batches an epoch)."""
    steps = steps_in_iterations((16, 22), per_epoch=10, total_iters=260)
    assert steps == (160, 220)
    s = LRSchedule(base_lr=0.02, total_iters=260, warmup_iters=0, step_at=steps)
    assert [s.lr_at(i) for i in (0, 159, 160, 219, 220, 259)] == pytest.approx([0.02, 0.02, 2e-3, 2e-3, 2e-4, 2e-4])
    with pytest.raises(ValueError, match=r"--lr-steps 16 30: epoch 30 ends at iteration 300 \(10 per epoch\), past "
                                         r"the schedule's 260"):
        steps_in_iterations((16, 30), per_epoch=10, total_iters=260)


@pytest.mark.parametrize("kwargs", [{"kind": "linear"}, {"base_lr": 0.0}, {"total_iters": 0}, {"warmup_iters": -1},
                                    {"step_at": (5, 3)}, {"step_at": (0, 3)}, {"step_at": (3, 11)},
                                    {"step_at": (3,), "kind": "cosine"}])
def test_bad_schedules_are_value_errors(kwargs) -> None:
    with pytest.raises(ValueError):
        LRSchedule(**({"base_lr": 0.01, "total_iters": 10} | kwargs))


def test_default_rates() -> None:
    assert default_lr("maskrcnn_r50_fpn", batch_size=2, world_size=8) == pytest.approx(0.02)  # torchvision's recipe
    assert default_lr("fasterrcnn_r50_fpn", batch_size=2) == pytest.approx(0.0025)  # linear scaling rule
    assert default_lr("small_r18_fpn", batch_size=2) == pytest.approx(0.02)
    assert default_warmup_iters(90_000) == 1000
    assert default_warmup_iters(100) == 10


def test_norm_parameters_have_no_weight_decay_and_frozen_ones_are_left_out() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 8, 1))
    model[2].weight.requires_grad_(False)
    opt = build_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[0].bias), id(model[2].bias)}
    assert opt.defaults["momentum"] == 0.9
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]


def test_weight_decay_pulls_weights_but_not_norm_gains() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    opt = build_optimizer(model, lr=1.0, momentum=0.0, weight_decay=0.5)
    before_w, before_g = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(model[0].weight, before_w * 0.5)
    assert torch.equal(model[1].weight, before_g)
