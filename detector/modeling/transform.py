"""Turning input images into the model's padded batch, and detections back into input pixels.

Input contract: images are Tensor[3, H, W], float in [0, 1] (uint8 in [0, 255] is converted).
Shape shorthand: N images; Hp x Wp the padded batch size, a multiple of ``size_divisible``.

Every step computes as torchvision's eager ``GeneralizedRCNNTransform`` does, in the same precision, so
that the exact mode gives its detections bit for bit on any image size (tests/detector/modeling/
test_transform.py, and bench/parity.py on real COCO images): the resized size (``resized_size``:
double-precision scale, truncated), the pixels (bilinear, no antialiasing), the zero padding to multiples
of 32, and boxes and keypoints mapped back by float32 ratios (``resize_ratios``). The other steps that
touch pixel coordinates are torchvision's own or tested against it: the anchor grid (integer strides,
tests/detector/modeling/test_anchors.py), clipping (``torchvision.ops.clip_boxes_to_image`` in rpn.py
and box_head.py), mask pasting (mask_paste.py, tested against ``paste_masks_in_image``). Training
resizes in the data pipeline (detector/data/transforms.py) to the same sizes, with the differences that
its docstring gives.

Detectron2's models take other inputs, each a field of ``InputConfig``: BGR channels, pixel_mean/std in
0..255 units (``pixel_range=255``), and ``resize_rule="detectron2"``: its DefaultPredictor's order and
arithmetic, the uint8 image resized first by Pillow (bilinear) to ResizeShortestEdge's size
(``detectron2_resized_size``: sides rounded as int(x + 0.5)), then made float and normalised.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from detector.modeling.banded_resize import resize_banded
from detector.structures import Detections


@dataclass(frozen=True)
class InputConfig:
    min_size: int = 800  # shorter side at inference (torchvision, Detectron2 COCO recipes)
    max_size: int = 1333  # longer side at most
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet, RGB in [0, 1]
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    size_divisible: int = 32  # so that every FPN level halves exactly
    # Detectron2's MSRA / FAIR trunks were trained on BGR images with mean and std in 0..255 units.
    channel_order: str = "RGB"  # or "BGR": the order of pixel_mean / pixel_std and of the model's input
    pixel_range: float = 1.0  # the model's value of a white pixel (uint8 255): 1.0, or 255.0 (Detectron2)
    resize_rule: str = "torchvision"  # or "detectron2": Pillow on the uint8 image, sides int(x + 0.5)

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.resize_rule not in RESIZE_RULES:
            raise ValueError(f"resize_rule must be one of {RESIZE_RULES}, got {self.resize_rule!r}")


RESIZE_RULES = ("torchvision", "detectron2")


def to_float(image: Tensor) -> Tensor:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.float().div_(255)
    if not image.is_floating_point():
        raise TypeError(f"expected a float or uint8 image, got {image.dtype}")
    return image


def to_model_pixels(image: Tensor, cfg: InputConfig) -> Tensor:
    """An input image (3, H, W), uint8 or float in [0, 1] -> float in the model's units and channel order
    (``to_float`` itself for the default RGB in [0, 1]). A uint8 image in 0..255 units is cast, not
    divided and multiplied back, so its values stay whole."""
    if cfg.pixel_range == 255.0 and image.dtype == torch.uint8:
        x = image.float()
    else:
        x = to_float(image)
        x = x * cfg.pixel_range if cfg.pixel_range != 1.0 else x
    return x.flip(0) if cfg.channel_order == "BGR" else x


def normalize(image: Tensor, cfg: InputConfig, *, inplace: bool = False) -> Tensor:
    """(image - mean) / std per channel; ``inplace`` overwrites ``image`` (the same numbers)."""
    mean = torch.as_tensor(cfg.pixel_mean, dtype=image.dtype, device=image.device)[:, None, None]
    std = torch.as_tensor(cfg.pixel_std, dtype=image.dtype, device=image.device)[:, None, None]
    return image.sub_(mean).div_(std) if inplace else (image - mean) / std


def preprocess(image: Tensor, cfg: InputConfig, *, banded: bool = False) -> Tensor:
    """An input image (3, H, W), uint8 or float in [0, 1] -> normalised and resized (3, H', W'), in
    torchvision's order and arithmetic (float, normalise, resize). A uint8 image's float copy is normalised
    in place, one full-size float tensor per image rather than three, with the same numbers; a float image
    given by the caller is left as it is. ``banded`` (the fast modes): an image larger than its resized
    size, whose float copy would be the largest tensor, is resized first, band by band, then normalised
    (``banded_resize``): the same numbers up to float rounding, and no full-size float copy. (A smaller
    one's float copy is smaller than the output; torch's one-pass resize is faster there.) The Detectron2
    rule resizes the uint8 image first in either case."""
    if cfg.resize_rule == "detectron2":
        return _preprocess_detectron2(image, cfg)
    size = resized_size(image.shape[-2], image.shape[-1], cfg.min_size, cfg.max_size)
    if banded and image.shape[-2] * image.shape[-1] > size[0] * size[1]:
        return normalize(resize_banded(image, size), cfg, inplace=True)
    x = to_float(image)
    return resize(normalize(x, cfg, inplace=x is not image), cfg.min_size, cfg.max_size)


def _preprocess_detectron2(image: Tensor, cfg: InputConfig) -> Tensor:
    """As Detectron2's DefaultPredictor and GeneralizedRCNN.preprocess_image: the uint8 image (a float
    one is rounded to uint8 first) resized by Pillow's bilinear filter, then float, then normalised."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (to_float(image).clamp(0, 1) * 255).round().to(torch.uint8)
    size = model_input_size(image.shape[-2], image.shape[-1], cfg)
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil).transpose(2, 0, 1).copy()).to(image.device)  # (3, H', W') uint8
    return normalize(to_model_pixels(x, cfg), cfg, inplace=True)


def model_input_size(height: int, width: int, cfg: InputConfig) -> tuple[int, int]:
    """(H', W') that the model resizes a (height, width) image to, by ``cfg.resize_rule``."""
    rule = detectron2_resized_size if cfg.resize_rule == "detectron2" else resized_size
    return rule(height, width, cfg.min_size, cfg.max_size)


def detectron2_resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(H', W') as Detectron2's ResizeShortestEdge.get_output_shape: the shorter side to ``min_size``,
    both scaled down if the longer passes ``max_size``, each side rounded as int(x + 0.5)."""
    size = float(min_size)
    scale = size / min(height, width)
    new_h, new_w = (size, scale * width) if height < width else (scale * height, size)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(H', W'): the shorter side scaled to ``min_size`` unless the longer would pass ``max_size``.

    torchvision's eager path exactly (``_resize_image_and_masks`` + ``F.interpolate(scale_factor=...,
    recompute_scale_factor=True)``): the scale in Python's double precision from the int sizes, each
    side ``int(side * scale)``, truncated. Its TorchScript/tracing branch computes the scale in float32
    tensors instead, which puts one side 1 px off on about half of COCO's sizes ((H, W) = (427, 640) ->
    (799, 1199) rather than (800, 1199)); a traced export must reproduce this rule, not that branch.
    A side that would truncate to 0 (aspect ratios past max_size / 1) is kept at 1 px, where torchvision
    fails.
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))  # Python float: double
    return max(1, int(height * scale)), max(1, int(width * scale))


def resize(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Bilinear resize of ``image`` (C, H, W) to ``resized_size``, as torchvision's model transform does."""
    size = resized_size(image.shape[-2], image.shape[-1], min_size, max_size)
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def resize_ratios(original_size: tuple[int, int], new_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(new_h / old_h, new_w / old_w) as float32 scalars divided in float32, as torchvision's
    ``resize_boxes`` and ``resize_keypoints`` compute them (a double quotient rounded to float32 may
    differ in the last bit)."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32) / torch.tensor(original_size[0], dtype=torch.float32)
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32) / torch.tensor(original_size[1], dtype=torch.float32)
    return ratio_h, ratio_w


def padded_size(size: tuple[int, int], size_divisible: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``size_divisible``."""
    return tuple((s + size_divisible - 1) // size_divisible * size_divisible for s in size)


def batch_images(images: list[Tensor], size_divisible: int) -> Tensor:
    """Zero-pad (after normalisation) to a common size: Tensor[N, 3, Hp, Wp]."""
    h, w = padded_size((max(i.shape[1] for i in images), max(i.shape[2] for i in images)), size_divisible)
    batch = images[0].new_zeros((len(images), 3, h, w))
    for b, img in zip(batch, images):
        b[:, : img.shape[1], : img.shape[2]].copy_(img)
    return batch


def rescale_detections(det: Detections, original_size: tuple[int, int]) -> Detections:
    """Map detections from the resized image's pixels back to the original image's."""
    ratio_h, ratio_w = resize_ratios(det.image_size, original_size)
    scale = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(det.boxes)
    keypoints = det.keypoints
    if keypoints is not None:
        keypoints = keypoints.clone()
        keypoints[..., 0] *= ratio_w.to(keypoints)
        keypoints[..., 1] *= ratio_h.to(keypoints)
    return replace(det, boxes=det.boxes * scale, image_size=tuple(original_size), keypoints=keypoints)
