"""Keypoint head of Mask R-CNN (He et al., 2017): 8 x conv3x3-512 over 14x14 RoIAlign features, a
2x deconv and a 2x bilinear upsampling to one 56x56 heatmap per keypoint; the loss is a cross-entropy
over the heatmap's pixels for each visible keypoint (a one-hot spatial softmax).

Shape shorthand: B RoIs, P keypoints, S = 56 heatmap size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.modeling.sampling import check_train_rois_per_image
from detector.modeling.speeds import InferenceOptions


@dataclass(frozen=True)
class KeypointHeadConfig:
    num_keypoints: int = 17  # COCO
    pool_size: int = 14
    sampling_ratio: int = 2
    num_convs: int = 8  # Mask R-CNN's keypoint head
    conv_dim: int = 512
    # A keypoint's score (KEYPOINT_SCORES): the heatmap logit at its maximum (torchvision), or Detectron2's
    # "softmax": exp(logit - max) over the sum of exp(heatmap - max) at the 56 x 56 heatmap's resolution.
    score: str = "logit"
    # Training only: at most this many RoIs of the keypoint classes per image (a random subset of the sampled
    # ones) go through the head; None: all of them, as Mask R-CNN (see MaskHeadConfig.train_rois_per_image).
    train_rois_per_image: int | None = None
    canonical_size: float = 224.0  # as MaskHeadConfig.canonical_size

    def __post_init__(self) -> None:
        check_train_rois_per_image(self.train_rois_per_image)


class KeypointHead(nn.Module):
    def __init__(self, in_channels: int, cfg: KeypointHeadConfig = KeypointHeadConfig()) -> None:
        super().__init__()
        dims = [in_channels] + [cfg.conv_dim] * cfg.num_convs
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:]))
        self.deconv = nn.ConvTranspose2d(dims[-1], cfg.num_keypoints, 4, stride=2, padding=1)
        for layer in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, D, 14, 14) -> heatmap logits (B, P, 56, 56)."""
        for conv in self.convs:
            x = F.relu_(conv(x))  # in place: conv outputs are read by nothing else
        x = self.deconv(x)  # (B, P, 28, 28)
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def for_inference(self, options: InferenceOptions) -> nn.Module:
        """This head at inference under ``options`` (``detector.modeling.fast_inference``): its 3x3 convs
        by NNPACK where it pays, under bf16 autocast if ``options.bf16``; the rest shared."""
        from detector.modeling import fast_inference as fast  # not imported by the exact path

        head = fast.shared_copy(self)
        head.convs = nn.ModuleList(fast.inference_conv(c, options, channels_last=False) for c in self.convs)
        return fast.with_bf16(head, options)


def keypoint_targets(keypoints: Tensor, boxes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Heatmap pixel index (y * size + x) of each keypoint inside its box and whether it counts:
    keypoints (B, P, 3) as (x, y, v), boxes (B, 4) -> (Tensor[B, P] int64, Tensor[B, P] bool)."""
    x0, y0 = boxes[:, 0:1], boxes[:, 1:2]
    scale_x = size / (boxes[:, 2:3] - x0)
    scale_y = size / (boxes[:, 3:4] - y0)
    x, y = keypoints[..., 0], keypoints[..., 1]
    on_right, on_bottom = x == boxes[:, 2:3], y == boxes[:, 3:4]  # the far edge belongs to the last bin
    x = ((x - x0) * scale_x).floor().long()
    y = ((y - y0) * scale_y).floor().long()
    x[on_right] = size - 1
    y[on_bottom] = size - 1
    valid = (x >= 0) & (y >= 0) & (x < size) & (y < size) & (keypoints[..., 2] > 0)
    return (y * size + x) * valid, valid


def keypoint_loss(heatmap_logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Spatial softmax cross-entropy over (B, P, S, S) logits for the valid (B, P) keypoints."""
    b, p, h, w = heatmap_logits.shape
    valid = valid.reshape(-1)
    if not valid.any():
        return heatmap_logits.sum() * 0
    return F.cross_entropy(heatmap_logits.reshape(b * p, h * w)[valid], targets.reshape(-1)[valid])


KEYPOINT_SCORES = ("logit", "softmax")


def heatmaps_to_keypoints(heatmaps: Tensor, boxes: Tensor, score: str = "logit") -> Tensor:
    """Decode (B, P, S, S) heatmap logits into image coordinates: Tensor[B, P, 3] as (x, y, score).

    Each heatmap is resized (bicubic) to its box's size in pixels, and the keypoint is the centre of the
    maximum's pixel; the score is the logit there (Mask R-CNN, as in Detectron and torchvision), or with
    ``score="softmax"`` Detectron2's (detectron2/modeling/roi_heads/keypoint_head.py): the resized map's
    exp(logit - max) normalised by the sum of exp(heatmap - max) over the S x S heatmap."""
    if score not in KEYPOINT_SCORES:
        raise ValueError(f"keypoint score must be one of {KEYPOINT_SCORES}, got {score!r}")
    out = heatmaps.new_zeros((boxes.shape[0], heatmaps.shape[1], 3))
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    p = heatmaps.shape[1]
    # Every box's size in whole pixels, read to the host at once: one device sync, not two per box.
    sizes = torch.stack([widths.ceil(), heights.ceil()], dim=1).to(torch.int64).tolist()  # [[w, h]] * B
    for i, (w, h) in enumerate(sizes):
        roi_map = F.interpolate(heatmaps[i][:, None], size=(h, w), mode="bicubic", align_corners=False)[:, 0]
        pos = roi_map.reshape(p, -1).argmax(dim=1)  # (P,)
        x_int, y_int = pos % w, torch.div(pos, w, rounding_mode="floor")
        out[i, :, 0] = (x_int.float() + 0.5) * (widths[i] / w) + boxes[i, 0]
        out[i, :, 1] = (y_int.float() + 0.5) * (heights[i] / h) + boxes[i, 1]
        logits = roi_map[torch.arange(p, device=pos.device), y_int, x_int]  # (P,) the maxima
        if score == "softmax":
            peak = logits.view(p, 1, 1)
            logits = (logits - peak.view(p)).exp_() / (heatmaps[i] - peak).exp_().sum((1, 2))
        out[i, :, 2] = logits
    return out
