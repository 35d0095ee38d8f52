"""The structures that cross the engine's boundaries.

``Targets`` is what a dataset gives the model for training, ``Detections`` is what
``RCNN.predict`` gives back. Both hold tensors for the objects of one image.

Shape shorthand: K objects, P keypoints per object, M mask resolution (28),
H x W the image's height and width in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from detector.mask_paste import masks_to_rle, paste_masks


@dataclass
class Targets:
    """Ground truth of one image, in that image's pixels.

    boxes (Tensor[K, 4]) in (x1, y1, x2, y2) with 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H.
    labels (Tensor[K], int64): contiguous model labels, 1..C (0 is background).
    masks (Tensor[K, H, W], uint8) of 0/1, optional.
    keypoints (Tensor[K, P, 3]) as (x, y, visibility) with COCO's v in {0, 1, 2}, optional.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor | None = None
    keypoints: Tensor | None = None

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device | str) -> Targets:
        return _map_tensors(self, lambda t: t.to(device))


@dataclass
class Detections:
    """What the model found in one image, in that image's pixels.

    boxes (Tensor[K, 4]) in (x1, y1, x2, y2); scores (Tensor[K]); labels (Tensor[K], int64).
    mask_probs (Tensor[K, M, M]): per-object mask probabilities in the object's box
        (not yet pasted into the image: see ``masks()`` and ``rle_masks()``), optional.
    keypoints (Tensor[K, P, 3]) as (x, y, score), score the heatmap logit, optional (a model with a
        keypoint head); rows of detections without keypoints are zeros.
    has_keypoints (Tensor[K], bool): which detections have keypoints (those of the model's keypoint
        classes, e.g. persons); with ``keypoints``, and all True when only ``keypoints`` is given.
    image_size: (H, W) of the image the detections are in.
    mask_paste: how ``masks()`` and ``rle_masks()`` paste (``detector.mask_paste.PASTE_RULES``): the
        model's own rule (its MaskHeadConfig.paste), "torchvision" unless it was trained by Detectron2.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    image_size: tuple[int, int] = field(default=(0, 0))
    mask_probs: Tensor | None = None
    keypoints: Tensor | None = None
    has_keypoints: Tensor | None = None
    mask_paste: str = "torchvision"

    def __post_init__(self) -> None:
        if self.keypoints is not None and self.has_keypoints is None:
            self.has_keypoints = torch.ones(self.keypoints.shape[0], dtype=torch.bool, device=self.keypoints.device)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> Detections:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return _map_tensors(self, lambda t: t[index])

    def to(self, device: torch.device | str) -> Detections:
        return _map_tensors(self, lambda t: t.to(device))

    def select(self, score_threshold: float = 0.0, labels: Sequence[int] | None = None,
               max_detections: int | None = None) -> Detections:
        """The detections scoring at least ``score_threshold`` with a label in ``labels`` (every label
        when None), best first, at most ``max_detections`` (all when None)."""
        keep = self.scores >= score_threshold  # (K,) bool
        if labels is not None:
            keep &= torch.isin(self.labels, torch.as_tensor(labels, dtype=self.labels.dtype, device=self.labels.device))
        index = keep.nonzero().flatten()  # (K',)
        index = index[self.scores[index].argsort(descending=True)][:max_detections]  # (min(K', max),)
        return self[index]

    def masks(self, threshold: float = 0.5) -> Tensor:
        """Full-image binary masks, Tensor[K, H, W] bool. Memory: K*H*W bytes."""
        if self.mask_probs is None:
            raise ValueError("these detections have no masks (the model has no mask head)")
        return paste_masks(self.mask_probs, self.boxes, self.image_size, threshold, self.mask_paste)

    def rle_masks(self, threshold: float = 0.5) -> list[dict]:
        """COCO compressed RLE of each mask, without building full-image masks."""
        if self.mask_probs is None:
            raise ValueError("these detections have no masks (the model has no mask head)")
        return masks_to_rle(self.mask_probs, self.boxes, self.image_size, threshold, self.mask_paste)


def _map_tensors(obj, fn):
    """A copy of a dataclass with ``fn`` applied to each of its tensor fields."""
    changes = {f.name: fn(getattr(obj, f.name)) for f in fields(obj) if isinstance(getattr(obj, f.name), Tensor)}
    return replace(obj, **changes)
