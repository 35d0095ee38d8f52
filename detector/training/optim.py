"""The optimiser and its learning-rate schedule.

SGD with momentum and weight decay (the R-CNN papers', torchvision's and Detectron2's recipe), a linear
warm-up from ``warmup_factor * base_lr``, then step decay (x0.1 at 2/3 and 8/9 of the schedule, as
Detectron2's 1x: 60k and 80k of 90k, or at the iterations given, as torchvision's ``--lr-steps``) or
cosine decay. The rate is a pure function of the iteration,
so a resumed run needs only the iteration to be back on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from detector.modeling.presets import train_recipe
from detector.training.schedules import SCHEDULES

# Normalisation layers keep their scale and shift free of weight decay (Detectron2's WEIGHT_DECAY_NORM = 0):
# pulling a GroupNorm gain towards zero only fights the layer it feeds.
NORM_TYPES = (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm, nn.SyncBatchNorm)


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    total_iters: int
    warmup_iters: int = 0
    warmup_factor: float = 1e-3  # torchvision's and Detectron2's warm-up start, as a fraction of base_lr
    kind: str = "step"
    milestones: tuple[float, ...] = (2 / 3, 8 / 9)  # fractions of total_iters where step decay multiplies by gamma
    step_at: tuple[int, ...] | None = None  # the iterations of the step decays instead (torchvision's --lr-steps)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if self.base_lr <= 0 or self.total_iters <= 0 or self.warmup_iters < 0:
            raise ValueError(
                f"need base_lr > 0, total_iters > 0 and warmup_iters >= 0, got {self.base_lr}, "
                f"{self.total_iters}, {self.warmup_iters}"
            )
        if self.step_at is not None and self.kind != "step":
            raise ValueError(f"lr steps {self.step_at} are for the step schedule, not {self.kind!r}")
        if self.step_at is not None and (list(self.step_at) != sorted(set(self.step_at)) or self.step_at[0] <= 0
                                         or self.step_at[-1] > self.total_iters):
            raise ValueError(f"lr steps must rise within the schedule's 1..{self.total_iters} iterations, "
                             f"got {self.step_at}")

    def step_iters(self) -> tuple[int, ...]:
        """The iterations from which each step decay applies."""
        if self.step_at is not None:
            return self.step_at
        return tuple(round(f * self.total_iters) for f in self.milestones)

    def lr_at(self, iteration: int) -> float:
        """The rate of the update made at (0-based) ``iteration``."""
        if self.kind == "step":
            decay = self.gamma ** sum(iteration >= s for s in self.step_iters())
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * min(iteration, self.total_iters) / self.total_iters))
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            decay *= self.warmup_factor * (1.0 - alpha) + alpha
        return self.base_lr * decay


def steps_in_iterations(epochs: tuple[int, ...], per_epoch: int, total_iters: int) -> tuple[int, ...]:
    """The iterations at which the step decays of ``epochs`` (torchvision's ``--lr-steps``) apply;
    ValueError for one past the end of the schedule."""
    late = [e for e in epochs if e * per_epoch > total_iters]
    if late:
        raise ValueError(f"--lr-steps {' '.join(map(str, epochs))}: epoch {late[0]} ends at iteration "
                         f"{late[0] * per_epoch} ({per_epoch} per epoch), past the schedule's {total_iters}")
    return tuple(e * per_epoch for e in epochs)


def default_lr(preset: str, batch_size: int, world_size: int = 1) -> float:
    """The rate of the preset's recipe (``detector.modeling.presets.RECIPES``) for ``batch_size`` images
    per process on ``world_size`` processes; torchvision's linear scaling rule for a custom config."""
    return train_recipe(preset).lr(batch_size * world_size)


def default_warmup_iters(total_iters: int) -> int:
    """torchvision's 1000 iterations (Detectron2's too), but at most a tenth of a short schedule."""
    return min(1000, total_iters // 10)


def build_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over the trainable parameters; normalisation layers' parameters without weight decay."""
    decay, no_decay = [], []
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                (no_decay if isinstance(module, NORM_TYPES) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
