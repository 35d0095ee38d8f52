"""Where a run starts from: a trained model (``--weights``), an ImageNet classifier's trunk
(``--backbone-weights``), or random initialisation where the preset can train from it.

A trunk with frozen BatchNorm (FrozenBatchNorm2d, torchvision's and Detectron2's choice for fine-tuning)
keeps the statistics it was built with: from random initialisation those do not normalise anything,
and the run trains into nonsense. So such a preset is refused without ``--weights`` or
``--backbone-weights``; a GroupNorm preset (``small_r18_fpn``) trains from scratch.

``--trainable-backbone-layers N`` is ``BackboneConfig.trainable_stages``: the N stages from the top
(layer4, layer3, layer2, layer1, then the stem) train, the others keep their initial values, as
torchvision's ``_resnet_fpn_extractor(backbone, trainable_layers=N)`` does.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from detector import distributed as dist
from detector.modeling.presets import PRESETS
from detector.modeling.rcnn import ModelConfig
from detector.training.checkpoint import load_pretrained
from detector.weights.imagenet import arch_title, read_trunk, resolve_trunk, trunk_entry_for
from detector.weights.loading import load_state_dict_strict

if TYPE_CHECKING:
    from detector.training.loop import TrainConfig

logger = logging.getLogger(__name__)


def with_trainable_stages(model_cfg: ModelConfig, stages: int | None) -> ModelConfig:
    """``model_cfg`` with ``stages`` trunk stages trained (None: the preset's own number)."""
    if stages is None:
        return model_cfg
    if not 0 <= stages <= 5:
        raise ValueError(f"trainable backbone layers must be in 0..5, got {stages}")
    return replace(model_cfg, backbone=replace(model_cfg.backbone, trainable_stages=stages))


def scratch_presets() -> list[str]:
    """The presets whose trunk trains from random initialisation (GroupNorm)."""
    return [name for name, build in PRESETS.items() if build().backbone.norm == "gn"]


def refuse_untrained_frozen_bn(model_cfg: ModelConfig, cfg: TrainConfig, preset: str) -> None:
    """ValueError, saying what to pass instead, for a frozen-BN trunk that would start from random values."""
    backbone = model_cfg.backbone
    if backbone.norm != "frozen_bn" or cfg.resume or cfg.weights is not None or cfg.backbone_weights is not None:
        return
    entry = trunk_entry_for(backbone.arch)
    trunk = f"--backbone-weights {entry}, or " if entry else "--backbone-weights with "
    raise ValueError(
        f"{preset} freezes its trunk's BatchNorm statistics (FrozenBatchNorm2d), which from random "
        f"initialisation normalise nothing: it would train into nonsense. Start from an ImageNet trunk "
        f"({trunk}a torchvision {arch_title(backbone.arch)} classifier file) or a trained model (--weights FILE); "
        f"or train {' or '.join(scratch_presets())}, whose GroupNorm trunk trains from scratch"
    )


def read_start_trunk(model_cfg: ModelConfig, cfg: TrainConfig, *, preset: str,
                     dist_info: dist.DistInfo) -> tuple[Path, dict[str, Tensor]] | None:
    """The file ``cfg.backbone_weights`` names and its trunk tensors, checked against ``model_cfg``'s trunk
    before the data set is read (None when the run does not start from one). A catalogue name is
    downloaded by the main process, then found by the others."""
    if cfg.backbone_weights is None or cfg.resume:
        return None
    if cfg.weights is not None:
        raise ValueError(f"--weights {cfg.weights} holds the trunk already: leave out --backbone-weights")
    path = resolve_trunk(cfg.backbone_weights) if dist_info.is_main else None
    dist.barrier(dist_info)
    path = path if path is not None else resolve_trunk(cfg.backbone_weights)
    return path, read_trunk(path, model_cfg.backbone, preset=preset, channel_order=model_cfg.input.channel_order)


def initialise(model: nn.Module, cfg: TrainConfig, trunk: tuple[Path, dict[str, Tensor]] | None) -> None:
    """Load ``cfg.weights``, or the ``trunk`` tensors (``read_start_trunk``), into ``model``; what they do
    not cover keeps ``build_model``'s initialisation."""
    if cfg.weights is not None:
        skipped = load_pretrained(model, cfg.weights)
        if skipped:
            logger.warning("%s: %d tensors of other shapes left initialised afresh: %s", cfg.weights,
                           len(skipped), ", ".join(skipped))
    elif trunk is not None:
        path, state = trunk
        load_state_dict_strict(model.backbone, state, source=str(path))
