"""Box head of Fast R-CNN with FPN: optional 3x3 convs (each with its norm and a ReLU) over 7x7 RoIAlign
features, then one or two fully connected layers, then a classifier over C+1 classes (0 = background)
and class-specific box deltas. torchvision's v1 head: two fc layers ("2fc"); its v2 head: four convs with
BatchNorm and one fc ("4conv1fc", Wu et al. / Detectron's GN recipe with BN).

Shape shorthand: B RoIs over the batch, C+1 classes, S pool size, E conv width, D fc width.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

from detector.modeling.box_coder import decode_boxes
from detector.modeling.norms import check_conv_norm, conv_of, with_norm
from detector.modeling.speeds import InferenceOptions


@dataclass(frozen=True)
class BoxHeadConfig:
    # Values of torchvision's and Detectron2's R50-FPN recipes.
    pool_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = False  # torchvision's checkpoints: False; our presets: True (Detectron2)
    pooler: str = "align"  # or "pool" (RoIPool)
    num_convs: int = 0  # 3x3 convs before the fc layers; torchvision's v2 head: 4
    conv_dim: int = 256
    norm: str | None = None  # after each of those convs (detector.modeling.norms); v2: "bn"
    num_fcs: int = 2  # 1 or 2 fc layers of fc_dim; v1: 2, v2: 1
    fc_dim: int = 1024
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 1.0 / 9
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    # Boxes narrower or lower than this (pixels) are dropped before NMS (torchvision); Detectron2 drops
    # none there (0.0) but drops the empty ones after the top detections_per_image (drop_empty_after_topk).
    min_box_size: float = 1e-2
    drop_empty_after_topk: bool = False
    # Which FPN level pools a box: "torchvision" or "detectron2" (poolers.LEVEL_RULES), for every head.
    pooler_levels: str = "torchvision"


class BoxHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, cfg: BoxHeadConfig = BoxHeadConfig()) -> None:
        """``num_classes`` counts the background."""
        super().__init__()
        check_conv_norm(cfg.norm, "BoxHeadConfig.norm")
        if cfg.num_fcs not in (1, 2):
            raise ValueError(f"BoxHeadConfig.num_fcs must be 1 or 2, got {cfg.num_fcs}")
        dims = [in_channels] + [cfg.conv_dim] * cfg.num_convs
        self.convs = nn.ModuleList(
            with_norm(nn.Conv2d(a, b, 3, padding=1, bias=cfg.norm is None), cfg.norm) for a, b in zip(dims[:-1], dims[1:])
        )
        for module in self.convs:  # as torchvision's FastRCNNConvFCHead
            nn.init.kaiming_normal_(conv_of(module).weight, mode="fan_out", nonlinearity="relu")
            if conv_of(module).bias is not None:
                nn.init.zeros_(conv_of(module).bias)
        self.fc1 = nn.Linear(dims[-1] * cfg.pool_size**2, cfg.fc_dim)
        self.fc2 = nn.Linear(cfg.fc_dim, cfg.fc_dim) if cfg.num_fcs == 2 else None
        self.cls_score = nn.Linear(cfg.fc_dim, num_classes)
        self.bbox_pred = nn.Linear(cfg.fc_dim, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, S, S) -> class logits (B, C+1), box deltas (B, (C+1)*4)."""
        for conv in self.convs:
            x = F.relu_(conv(x))  # (B, E, S, S)
        x = F.relu_(self.fc1(x.flatten(1)))  # (B, D)
        if self.fc2 is not None:
            x = F.relu_(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x)

    def for_inference(self, options: InferenceOptions) -> nn.Module:
        """This head at inference (``detector.modeling.fast_inference``): a copy sharing its tensors, its
        convs' BatchNorms folded in, their weights in the options' layout (oneDNN), under bf16 autocast if
        ``options.bf16``. Never NNPACK: over the 7x7 maps of a thousand RoIs its Winograd tiles are
        slower than oneDNN, which ``kernels.nnpack_pays`` (tuned on feature maps) cannot tell
        (the box stage of bench/results/engine_v2_b1_nnpack_box_head.json against engine_v2_b1.json)."""
        from detector.modeling import fast_inference as fast  # not imported by the exact path

        options = replace(options, nnpack=False)
        head = fast.shared_copy(self)
        head.convs = nn.ModuleList(fast.inference_conv_block(c, options) for c in self.convs)
        return fast.with_bf16(head, options)


def fastrcnn_loss(
    class_logits: Tensor, box_deltas: Tensor, gt_labels: Tensor, gt_deltas: Tensor, beta: float
) -> dict[str, Tensor]:
    """Cross-entropy over all sampled RoIs; smooth-L1 on the deltas of the ground-truth class of the
    foreground ones, normalised by the number of RoIs (so that an image with no objects gives zero box
    loss). class_logits (B, C+1), box_deltas (B, (C+1)*4), gt_labels (B,), gt_deltas (B, 4)."""
    loss_cls = F.cross_entropy(class_logits, gt_labels)
    fg = torch.where(gt_labels > 0)[0]
    deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[fg, gt_labels[fg]]  # (F, 4)
    loss_box = F.smooth_l1_loss(deltas, gt_deltas[fg], beta=beta, reduction="sum") / max(1, gt_labels.numel())
    return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}


def box_inference(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    cfg: BoxHeadConfig,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image (boxes (K, 4), scores (K,), labels (K,)): decode every class's box, drop background and
    scores <= score_thresh, NMS per class, keep the top ``detections_per_image``."""
    num_classes = class_logits.shape[1]
    boxes = decode_boxes(box_deltas, torch.cat(proposals), cfg.box_weights).view(-1, num_classes, 4)  # (B, C+1, 4)
    scores = F.softmax(class_logits, -1)  # (B, C+1)
    results = []
    counts = [len(p) for p in proposals]
    for b, s, size in zip(boxes.split(counts), scores.split(counts), image_sizes):
        b = clip_boxes_to_image(b, size)
        labels = torch.arange(num_classes, device=b.device).view(1, -1).expand_as(s)
        b, s, labels = b[:, 1:].reshape(-1, 4), s[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = torch.where(s > cfg.score_thresh)[0]
        b, s, labels = b[keep], s[keep], labels[keep]
        if cfg.min_box_size > 0:
            keep = remove_small_boxes(b, min_size=cfg.min_box_size)
            b, s, labels = b[keep], s[keep], labels[keep]
        keep = batched_nms(b, s, labels, cfg.nms_thresh)[: cfg.detections_per_image]
        if cfg.drop_empty_after_topk:  # detectron2's detector_postprocess: Boxes.nonempty()
            keep = keep[(b[keep, 2] > b[keep, 0]) & (b[keep, 3] > b[keep, 1])]
        results.append((b[keep], s[keep], labels[keep]))
    return results
