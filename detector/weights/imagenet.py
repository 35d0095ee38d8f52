"""ImageNet classifier checkpoints, torchvision's ResNet/ResNeXt files, as the trunk a detector trains from.

A torchvision classifier's state_dict holds ``conv1``, ``bn1``, ``layer1``..``layer4`` and ``fc``; the
detector's trunk (``detector.modeling.backbone.ResNetBackbone``) has the same names without ``fc``. So
``load_trunk`` drops ``fc.*`` and loads the rest strictly, BatchNorm statistics included: into
FrozenBatchNorm2d where the preset freezes them, into BatchNorm2d (with its step counter) where it trains
them. A GroupNorm trunk is refused: the statistics of a BatchNorm do not make a GroupNorm. The FPN and the
heads keep the fresh initialisation ``build_model`` gave them.

What a file holds is read from its keys and shapes, never from its name: the blocks per stage give the
depth (ResNet-18/34: basic blocks; 50/101/152: bottlenecks, which have a ``conv3``), and the first
bottleneck's 3x3 convolution, of shape (groups x width per group, width per group, 3, 3), the ResNeXt
groups and width. A file that does not fit is a ValueError naming the file and what it looks like.

Shape shorthand: G groups, d channels per group of a bottleneck's 3x3 convolution in layer1.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from detector.modeling.backbone import BackboneConfig
from detector.modeling.presets import PRESETS
from detector.weights.catalogue import load_catalogue, resolve_catalogued, verify_if_catalogued
from detector.weights.detectron2 import read_detectron2_trunk
from detector.weights.loading import load_state_dict_strict, read_state_dict

log = logging.getLogger(__name__)

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
CLASSIFIER_PREFIX = "fc."  # the ImageNet classifier, which a detector does not use
# (block, blocks per stage) -> depth, as torchvision's resnet18 ... resnet152 build them.
DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}
# The keys by which a detection model's file is known: torchvision's ("backbone.body.") and ours.
DETECTION_PREFIXES = ("backbone.body.", "rpn.", "roi_heads.", "fpn.")


@dataclass(frozen=True)
class TrunkShape:
    """What a ResNet-family state_dict is, from its keys and shapes."""

    block: str  # "basic" or "bottleneck"
    blocks: tuple[int, int, int, int]  # blocks in layer1..layer4
    groups: int = 1  # G; ResNeXt-101 32x8d: 32
    width_per_group: int = 64  # d; ResNeXt-101 32x8d: 8; Wide ResNet-50-2: 128

    @property
    def arch(self) -> str | None:
        """torchvision's constructor name (``resnet50``, ``resnext101_32x8d``, ``wide_resnet50_2``), or None
        for block counts that no torchvision ResNet has."""
        depth = DEPTHS.get((self.block, self.blocks))
        if depth is None:
            return None
        if self.groups > 1:
            return f"resnext{depth}_{self.groups}x{self.width_per_group}d"
        if self.width_per_group != 64:
            return f"wide_resnet{depth}_{self.width_per_group // 64}"
        return f"resnet{depth}"

    def describe(self) -> str:
        arch = self.arch
        if arch is None:
            blocks = "/".join(map(str, self.blocks))
            return f"a ResNet trunk with {blocks} {self.block} blocks, which no torchvision ResNet has"
        return f"a {arch_title(arch)} trunk"


def arch_title(arch: str) -> str:
    """``resnet50`` -> "ResNet-50", ``resnext101_32x8d`` -> "ResNeXt-101 32x8d", ``wide_resnet50_2`` ->
    "Wide ResNet-50-2": torchvision's names as its documentation writes them."""
    for pattern, title in ((r"resnet(\d+)", r"ResNet-\1"), (r"resnext(\d+)_(\w+)", r"ResNeXt-\1 \2"),
                           (r"wide_resnet(\d+)_(\d+)", r"Wide ResNet-\1-\2")):
        if re.fullmatch(pattern, arch):
            return re.sub(pattern, title, arch)
    return arch


def trunk_shape(state: dict[str, Tensor], source: str) -> TrunkShape:
    """The shape of the ResNet trunk in ``state`` (a classifier's or a bare trunk's keys); ValueError
    naming ``source`` and what it holds instead (a detection model, something else)."""
    if any(k.startswith(DETECTION_PREFIXES) for k in state):
        raise ValueError(f"{source}: a full detection model, not an ImageNet classifier: pass it as --weights")
    blocks = []
    for stage in STAGE_NAMES:
        indices = {int(m[1]) for k in state if (m := re.match(rf"{stage}\.(\d+)\.", k))}
        blocks.append(len(indices))
    if "conv1.weight" not in state or 0 in blocks:
        first = ", ".join(sorted(state)[:4])
        raise ValueError(f"{source}: not a ResNet classifier (no conv1 and layer1..layer4; its keys begin "
                         f"{first or 'nowhere: it is empty'})")
    if "layer1.0.conv3.weight" not in state:
        return TrunkShape("basic", tuple(blocks))
    conv = state.get("layer1.0.conv2.weight")
    if conv is None or conv.dim() != 4:
        found = "absent" if conv is None else f"of shape {tuple(conv.shape)}"
        raise ValueError(f"{source}: not a ResNet classifier (layer1.0.conv2.weight {found})")
    width, per_group = conv.shape[:2]  # (G*d, d, 3, 3)
    return TrunkShape("bottleneck", tuple(blocks), groups=width // per_group, width_per_group=per_group)


def trunk_state(state: dict[str, Tensor], cfg: BackboneConfig, *, source: str, preset: str) -> dict[str, Tensor]:
    """The tensors of ``state`` that make the trunk of ``cfg``: the classifier dropped, BatchNorm's step
    counter dropped for FrozenBatchNorm2d (which has none) and supplied as 0 for BatchNorm2d where an old
    file lacks it. ValueError naming ``source`` when the file is another trunk, or ``cfg`` a GroupNorm one."""
    shape = trunk_shape(state, source)
    if cfg.norm == "gn":
        fitting = [name for name, build in PRESETS.items()
                   if build().backbone.arch == shape.arch and build().backbone.norm != "gn"]
        raise ValueError(f"{source}: {preset}'s trunk uses GroupNorm, which the BatchNorm statistics of an ImageNet "
                         f"classifier do not fit; {preset} trains from scratch without --backbone-weights"
                         + (f"; presets that start from {shape.describe()}: {', '.join(fitting)}" if fitting else ""))
    if shape.arch != cfg.arch:
        raise ValueError(f"{source}: {shape.describe()}; {preset} needs {arch_title(cfg.arch)}")
    trunk = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIX)}
    counters = [k.removesuffix("running_mean") + "num_batches_tracked" for k in trunk if k.endswith("running_mean")]
    for key in counters:
        if cfg.norm == "frozen_bn":
            trunk.pop(key, None)
        else:
            trunk.setdefault(key, torch.tensor(0, dtype=torch.long))
    return trunk


def read_trunk(path: str | Path, cfg: BackboneConfig, *, preset: str,
               channel_order: str = "RGB") -> dict[str, Tensor]:
    """The trunk tensors of the ImageNet classifier file ``path`` for a trunk of ``cfg`` (``trunk_state``):
    torchvision's classifier files, or Detectron2's ImageNet trunks (``.pkl``: MSRA's R-50/R-101, FAIR's
    X-101-32x8d, in Caffe2's names), which were trained on BGR input and fit only a preset whose input
    ``channel_order`` is BGR (the ``d2_*`` presets)."""
    if Path(path).suffix == ".pkl":
        if channel_order != "BGR":
            raise ValueError(f"{path}: a Detectron2 ImageNet trunk, trained on BGR images; {preset} takes RGB input: "
                             "start a d2_* preset from it, or this preset from a torchvision classifier file")
        state = read_detectron2_trunk(path)
    else:
        state = read_state_dict(path)
    trunk = trunk_state(state, cfg, source=str(path), preset=preset)
    log.info("%s: %s for %s's trunk (%s)", path, trunk_shape(state, str(path)).describe(), preset, cfg.norm)
    return trunk


def load_trunk(backbone: nn.Module, path: str | Path, cfg: BackboneConfig, *, preset: str,
               channel_order: str = "RGB") -> None:
    """Load the ImageNet classifier file ``path`` into ``backbone`` (a ``ResNetBackbone`` built from
    ``cfg``), strictly: every tensor of the trunk, BatchNorm statistics included."""
    load_state_dict_strict(backbone, read_trunk(path, cfg, preset=preset, channel_order=channel_order),
                           source=str(path))


def trunk_entries() -> dict[str, str]:
    """{catalogue name: torchvision arch} of the catalogue's ImageNet trunks."""
    return {name: e.trunk for name, e in load_catalogue().items() if e.trunk is not None}


def trunk_entry_for(arch: str) -> str | None:
    """The catalogue's ImageNet file for trunk ``arch``, if it lists one."""
    return next((name for name, a in trunk_entries().items() if a == arch), None)


def resolve_trunk(spec: str | Path) -> Path:
    """The file that ``--backbone-weights`` names: a path (checked against the catalogue when it claims an
    entry, as every weights file is), or a catalogue name, downloaded into the cache when not there yet."""
    path, entry = resolve_catalogued(spec, trunk=True)
    if entry is None:
        verify_if_catalogued(path)
    return path
