"""Training transforms that move an image and its targets together.

Each transform is a callable ``(image, targets) -> (image, targets)``: image a Tensor[3, H, W]
uint8, targets a ``Targets`` in that image's pixels. Boxes use continuous pixel coordinates
(the image spans [0, W] x [0, H]), so resizing scales them and mirroring maps x to W - x.
Keypoints with v = 0 are never moved (COCO writes them as (0, 0, 0)).

Randomness comes from a ``torch.Generator`` or a seed that makes one. With neither, the global
torch RNG is used, which DataLoader seeds differently in each worker: a Generator given here is
copied into every worker with the same state, so all workers would draw the same numbers.

Shape shorthand: K objects, P keypoints per object, H x W the image's height and width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES
from detector.modeling.transform import resize_ratios, resized_size
from detector.structures import Targets

Transform = Callable[[Tensor, Targets], tuple[Tensor, Targets]]


def flip_indices_for(names: Sequence[str]) -> tuple[int, ...]:
    """For each keypoint, the index of its mirror image: left_* <-> right_*, others themselves."""
    index = {name: i for i, name in enumerate(names)}
    out = []
    for name in names:
        side, _, part = name.partition("_")
        mirror = {"left": f"right_{part}", "right": f"left_{part}"}.get(side, name)
        if mirror not in index:
            raise ValueError(f"keypoint {name!r} has no mirror {mirror!r} among {list(names)}")
        out.append(index[mirror])
    return tuple(out)


COCO_FLIP_INDICES: tuple[int, ...] = flip_indices_for(COCO_KEYPOINT_NAMES)


def resize(image: Tensor, targets: Targets, size: tuple[int, int]) -> tuple[Tensor, Targets]:
    """Resize to size = (H', W'): bilinear (antialiased) image, nearest masks, scaled boxes and keypoints.

    Boxes and keypoints scale by torchvision's float32 ratios (``resize_ratios``). Where this differs from
    torchvision's training transform, on purpose: the image is antialiased (the model then learns from the
    same kind of pixels whatever the downscale; torchvision interpolates without), masks sample each
    output pixel's centre (NEAREST_EXACT, below), and unlabelled keypoints (v = 0) stay (0, 0), which no
    loss reads."""
    _, height, width = image.shape
    new_h, new_w = size
    sy, sx = resize_ratios((height, width), size)
    image = F.resize(image, [new_h, new_w], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    scale = torch.stack([sx, sy, sx, sy]).to(targets.boxes.dtype)
    boxes = targets.boxes * scale  # (K, 4)
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([new_w, new_h, new_w, new_h], dtype=boxes.dtype))
    masks = targets.masks
    if masks is not None:
        # NEAREST_EXACT samples each output pixel's centre; plain NEAREST shifts masks by up to a
        # source pixel towards the top-left, away from the boxes.
        masks = F.resize(masks, [new_h, new_w], interpolation=F.InterpolationMode.NEAREST_EXACT)  # (K, H', W')
    keypoints = targets.keypoints
    if keypoints is not None:
        labelled = keypoints[..., 2:3] > 0  # (K, P, 1)
        xy = keypoints[..., :2] * torch.stack([sx, sy]).to(keypoints.dtype)
        keypoints = torch.cat([torch.where(labelled, xy, keypoints[..., :2]), keypoints[..., 2:]], dim=-1)
    return image, replace(targets, boxes=boxes, masks=masks, keypoints=keypoints)


def hflip(image: Tensor, targets: Targets, flip_indices: Sequence[int] = COCO_FLIP_INDICES) -> tuple[Tensor, Targets]:
    """Mirror left-right: x -> W - x, and keypoint k takes the place of keypoint flip_indices[k]."""
    width = image.shape[-1]
    boxes = targets.boxes
    boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)  # (K, 4)
    masks = targets.masks.flip(-1) if targets.masks is not None else None
    keypoints = targets.keypoints
    if keypoints is not None:
        if keypoints.shape[1] != len(flip_indices):
            raise ValueError(
                f"flip_indices has {len(flip_indices)} entries but the targets have {keypoints.shape[1]} keypoints"
            )
        keypoints = keypoints[:, list(flip_indices)]  # (K, P, 3): left and right swap places
        x = torch.where(keypoints[..., 2] > 0, width - keypoints[..., 0], keypoints[..., 0])  # (K, P)
        keypoints = torch.cat([x.unsqueeze(-1), keypoints[..., 1:]], dim=-1)
    return image.flip(-1), replace(targets, boxes=boxes, masks=masks, keypoints=keypoints)


def _as_generator(source: torch.Generator | int | None) -> torch.Generator | None:
    if source is None or isinstance(source, torch.Generator):
        return source
    if isinstance(source, bool) or not isinstance(source, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, not {source!r}")
    return torch.Generator().manual_seed(source)


@dataclass
class Resize:
    """Shorter side drawn at random from min_sizes (multi-scale training), longer side at most max_size;
    the size as torchvision's model transform computes it (``resized_size``)."""

    min_sizes: tuple[int, ...] = (800,)  # torchvision's detection recipe trains at 800
    max_size: int = 1333  # ... with the longer side capped at 1333
    generator: torch.Generator | int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.min_sizes = tuple(self.min_sizes)
        if not self.min_sizes or any(not isinstance(s, int) or s <= 0 for s in self.min_sizes):
            raise ValueError(f"min_sizes must be positive ints, got {self.min_sizes}")
        if not isinstance(self.max_size, int) or self.max_size <= 0:
            raise ValueError(f"max_size must be a positive int, got {self.max_size!r}")
        self.generator = _as_generator(self.generator)

    def __call__(self, image: Tensor, targets: Targets) -> tuple[Tensor, Targets]:
        choice = int(torch.randint(len(self.min_sizes), (1,), generator=self.generator))
        _, height, width = image.shape
        return resize(image, targets, resized_size(height, width, self.min_sizes[choice], self.max_size))


@dataclass
class RandomHorizontalFlip:
    """Mirror with probability p, swapping left and right keypoints."""

    p: float = 0.5
    flip_indices: tuple[int, ...] = COCO_FLIP_INDICES
    generator: torch.Generator | int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {self.p}")
        self.flip_indices = tuple(self.flip_indices)
        if sorted(self.flip_indices) != list(range(len(self.flip_indices))):
            raise ValueError(f"flip_indices must be a permutation of 0..P-1, got {self.flip_indices}")
        self.generator = _as_generator(self.generator)

    def __call__(self, image: Tensor, targets: Targets) -> tuple[Tensor, Targets]:
        if float(torch.rand((), generator=self.generator)) < self.p:
            return hflip(image, targets, self.flip_indices)
        return image, targets


@dataclass
class Compose:
    """Apply transforms in order."""

    transforms: Sequence[Transform]

    def __call__(self, image: Tensor, targets: Targets) -> tuple[Tensor, Targets]:
        for transform in self.transforms:
            image, targets = transform(image, targets)
        return image, targets
