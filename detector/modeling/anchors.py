"""Anchors: at every location of every feature level, one box per (scale, aspect ratio) pair.

Shape shorthand: L levels, A anchors per location = len(sizes[l]) * len(aspect_ratios), Hl x Wl the
size of level l. Anchors of level l are ordered (Hl, Wl, A), the order the RPN head's outputs are
flattened in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class AnchorConfig:
    # One tuple of sizes (sqrt of the anchor's area, in input pixels) per feature level. torchvision's
    # COCO checkpoints: one size per FPN level, 32..512. Our own presets: three octave scales per level.
    sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    # Each level's stride; None: padded image size // feature size, as torchvision (its checkpoints were
    # trained so). Detectron2: the levels' nominal strides (4, 8, 16, 32, 64).
    strides: tuple[int, ...] | None = None
    # torchvision and Detectron1 round the cell anchors to whole pixels; Detectron2 does not, and computes
    # them as w = sqrt(size^2 / ratio), h = ratio * w in double precision, size-major.
    round_cell_anchors: bool = True

    @property
    def num_anchors_per_location(self) -> int:
        counts = {len(s) for s in self.sizes}
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of sizes, got {self.sizes}")
        return counts.pop() * len(self.aspect_ratios)


def octave_sizes(base_sizes: tuple[float, ...], scales_per_octave: int = 3) -> tuple[tuple[float, ...], ...]:
    """Sizes base * 2^(k / scales_per_octave), k = 0..scales_per_octave-1, for each level's base size."""
    return tuple(tuple(b * 2 ** (k / scales_per_octave) for k in range(scales_per_octave)) for b in base_sizes)


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """Anchors centred on (0, 0): Tensor[A, 4] xyxy, ratio-major, rounded to whole pixels as in Detectron."""
    # On the CPU even in a model built on the "meta" device (Predictor.from_preset): not a weight, no file has it.
    scales = torch.as_tensor(sizes, dtype=torch.float32, device="cpu")
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32, device="cpu")
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)  # (A,)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def detectron2_cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...]) -> Tensor:
    """Anchors centred on (0, 0) as Detectron2's DefaultAnchorGenerator makes them: Tensor[A, 4] xyxy,
    size-major, w = sqrt(size^2 / ratio) and h = ratio * w in double precision, not rounded."""
    anchors = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = math.sqrt(size**2 / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32, device="cpu")


class AnchorGenerator(nn.Module):
    def __init__(self, cfg: AnchorConfig = AnchorConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_anchors_per_location = cfg.num_anchors_per_location
        if cfg.strides is not None and len(cfg.strides) != len(cfg.sizes):
            raise ValueError(f"{len(cfg.strides)} anchor strides for {len(cfg.sizes)} levels of sizes")
        make = cell_anchors if cfg.round_cell_anchors else detectron2_cell_anchors
        self.cell_anchors = [make(s, cfg.aspect_ratios) for s in cfg.sizes]
        self._cache: dict[tuple, list[Tensor]] = {}

    def forward(self, image_size: tuple[int, int], feature_sizes: list[tuple[int, int]], device) -> list[Tensor]:
        """Anchors for a padded batch of ``image_size`` (H, W): one Tensor[Hl*Wl*A, 4] per level.

        The stride of a level is image_size // feature_size (integer division, as torchvision computes it:
        the COCO checkpoints were trained with it, e.g. a stride of 61 instead of 64 on an 800-pixel P6),
        or the config's ``strides`` (Detectron2).
        """
        if len(feature_sizes) != len(self.cell_anchors):
            raise ValueError(f"{len(feature_sizes)} feature levels but anchor sizes for {len(self.cell_anchors)}")
        key = (tuple(image_size), tuple(map(tuple, feature_sizes)), str(device))
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            strides = self.cfg.strides or [None] * len(feature_sizes)
            self._cache[key] = [
                _grid_anchors(base.to(device), (image_size[0] // fh, image_size[1] // fw) if s is None else (s, s), (fh, fw))
                for base, (fh, fw), s in zip(self.cell_anchors, feature_sizes, strides)
            ]
        return self._cache[key]


def _grid_anchors(base: Tensor, stride: tuple[int, int], size: tuple[int, int]) -> Tensor:
    shifts_y = torch.arange(0, size[0], dtype=torch.int32, device=base.device) * stride[0]
    shifts_x = torch.arange(0, size[1], dtype=torch.int32, device=base.device) * stride[1]
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)  # (Hl*Wl, 1, 4)
    return (shifts + base.view(1, -1, 4)).reshape(-1, 4)  # (Hl*Wl*A, 4)
