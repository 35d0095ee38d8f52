"""Region Proposal Network (Ren et al., 2015): a 3x3 conv head shared across FPN levels predicts, for
each anchor, an objectness logit and box deltas (t_x, t_y, t_w, t_h); the decoded boxes go through
per-level top-k, clipping, NMS and a global top-k to become proposals.

Shape shorthand: N images, L levels, A anchors per location, Hl x Wl size of level l,
R = sum_l Hl*Wl*A anchors per image, G ground-truth boxes of an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from detector.modeling.anchors import AnchorConfig, AnchorGenerator
from detector.modeling.box_coder import decode_boxes, encode_boxes
from detector.modeling.sampling import BELOW_LOW, BETWEEN, match, sample_balanced
from detector.modeling.speeds import InferenceOptions


@dataclass(frozen=True)
class RPNConfig:
    # Values of torchvision's and Detectron2's FPN recipes.
    pre_nms_top_n_train: int = 2000  # per level
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000  # per image, after NMS over all levels
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    score_thresh: float = 0.0
    min_size: float = 1e-3
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    smooth_l1_beta: float = 1.0 / 9  # torchvision; Detectron2 uses 0 (L1)
    # NMS ranks proposals by their objectness logits (Detectron2) rather than sigmoid probabilities
    # (torchvision): the same order, except among logits large enough for the sigmoid to round to 1.0.
    nms_on_logits: bool = False
    conv_depth: int = 1  # 3x3 convs (each with a ReLU) before the two 1x1 predictors; torchvision's v2 head: 2


class RPNHead(nn.Module):
    def __init__(self, channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        """``conv_depth`` 3x3 convs: ``conv`` (the v1 head's only one), then ``extra_convs``."""
        super().__init__()
        if conv_depth < 1:
            raise ValueError(f"RPNConfig.conv_depth must be at least 1, got {conv_depth}")
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.extra_convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(conv_depth - 1))
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in (self.conv, *self.extra_convs, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness (N, A, Hl, Wl) and deltas (N, A*4, Hl, Wl)."""
        logits, deltas = [], []
        for x in features:
            t = F.relu_(self.conv(x))  # (N, C, Hl, Wl)
            for conv in self.extra_convs:
                t = F.relu_(conv(t))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas

    def for_inference(self, options: InferenceOptions) -> nn.Module:
        """This head at inference under ``options`` (``detector.modeling.fast_inference``): with NNPACK,
        its 3x3 conv by NNPACK and its two 1x1 convs as one matmul (MatmulRPNHead); else its convs in the
        options' layout; under bf16 autocast if ``options.bf16``. Shares the tensors it does not change."""
        from detector.modeling import fast_inference as fast  # not imported by the exact path

        if options.nnpack:  # the matmul reads NCHW
            conv = nn.Sequential(*(fast.inference_conv(c, options, relu=True, channels_last=False)
                                   for c in (self.conv, *self.extra_convs)))
            return fast.with_bf16(fast.MatmulRPNHead(conv, self.objectness_logits, self.anchor_deltas), options)
        head = fast.shared_copy(self)
        head.conv = fast.inference_conv(self.conv, options)
        head.extra_convs = nn.ModuleList(fast.inference_conv(c, options) for c in self.extra_convs)
        head.objectness_logits = fast.inference_conv(self.objectness_logits, options)
        head.anchor_deltas = fast.inference_conv(self.anchor_deltas, options)
        return fast.with_bf16(head, options)


class RPN(nn.Module):
    def __init__(self, channels: int, anchors: AnchorConfig = AnchorConfig(), cfg: RPNConfig = RPNConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(anchors)
        self.head = RPNHead(channels, self.anchor_generator.num_anchors_per_location, cfg.conv_depth)

    def forward(
        self,
        features: list[Tensor],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
        gt_boxes: list[Tensor] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals (one Tensor[<=post_nms_top_n, 4] per image) and, when ``gt_boxes`` are given, the
        losses ``loss_objectness`` and ``loss_rpn_box_reg``. ``image_sizes`` are the images' sizes inside
        the padded batch of ``padded_size``."""
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(padded_size, [f.shape[-2:] for f in features], features[0].device)
        anchors = torch.cat(anchors)  # (R, 4)
        per_level = [x.shape[1] * x.shape[2] * x.shape[3] for x in logits]  # Hl*Wl*A
        logits = torch.cat([_flatten(x, 1) for x in logits], dim=1).squeeze(2)  # (N, R)
        deltas = torch.cat([_flatten(x, 4) for x in deltas], dim=1)  # (N, R, 4)
        n = deltas.shape[0]
        boxes = decode_boxes(deltas.detach().reshape(-1, 4), anchors.repeat(n, 1)).view(n, -1, 4)
        proposals = self._select_proposals(boxes, logits.detach(), image_sizes, per_level)
        losses = {} if gt_boxes is None else self._losses(anchors, logits, deltas, gt_boxes)
        return proposals, losses

    def for_inference(self, options: InferenceOptions) -> RPN:
        """This RPN with its head's inference form (``RPNHead.for_inference``); the rest shared."""
        from detector.modeling import fast_inference as fast  # not imported by the exact path

        rpn = fast.shared_copy(self)
        rpn.head = self.head.for_inference(options)
        return rpn

    def _select_proposals(
        self, boxes: Tensor, logits: Tensor, image_sizes: list[tuple[int, int]], per_level: list[int]
    ) -> list[Tensor]:
        pre_nms = self.cfg.pre_nms_top_n_train if self.training else self.cfg.pre_nms_top_n_test
        post_nms = self.cfg.post_nms_top_n_train if self.training else self.cfg.post_nms_top_n_test
        # Top-k per level, so that the many small-anchor levels do not crowd out the others.
        top_idx, levels, start = [], [], 0
        for level, count in enumerate(per_level):
            idx = logits[:, start : start + count].topk(min(pre_nms, count), dim=1).indices + start
            top_idx.append(idx)
            levels.append(torch.full_like(idx, level))
            start += count
        top_idx, levels = torch.cat(top_idx, dim=1), torch.cat(levels, dim=1)  # (N, K)
        batch = torch.arange(boxes.shape[0], device=boxes.device)[:, None]
        boxes, top_logits = boxes[batch, top_idx], logits[batch, top_idx]  # (N, K, 4), (N, K)
        scores = torch.sigmoid(top_logits)
        ranks = top_logits if self.cfg.nms_on_logits else scores
        proposals = []
        for b, s, r, lvl, size in zip(boxes, scores, ranks, levels, image_sizes):
            b = clip_boxes_to_image(b, size)
            keep = remove_small_boxes(b, self.cfg.min_size)
            b, s, r, lvl = b[keep], s[keep], r[keep], lvl[keep]
            keep = torch.where(s >= self.cfg.score_thresh)[0]
            b, r, lvl = b[keep], r[keep], lvl[keep]
            keep = batched_nms(b, r, lvl, self.cfg.nms_thresh)[:post_nms]
            proposals.append(b[keep])
        return proposals

    def _losses(self, anchors: Tensor, logits: Tensor, deltas: Tensor, gt_boxes: list[Tensor]) -> dict[str, Tensor]:
        labels, targets = [], []
        for gt in gt_boxes:
            if gt.numel() == 0:
                labels.append(torch.zeros(anchors.shape[0], device=anchors.device))
                targets.append(torch.zeros_like(anchors))
                continue
            matches = match(box_iou(gt, anchors), self.cfg.fg_iou_thresh, self.cfg.bg_iou_thresh, True)
            lab = (matches >= 0).to(torch.float32)  # (R,)
            lab[matches == BETWEEN] = -1.0
            lab[matches == BELOW_LOW] = 0.0
            labels.append(lab)
            targets.append(encode_boxes(gt[matches.clamp(min=0)], anchors))
        labels, targets = torch.cat(labels), torch.cat(targets)  # (N*R,), (N*R, 4)
        pos, neg = [], []
        per_image = anchors.shape[0]
        for i, lab in enumerate(labels.split(per_image)):
            p, q = sample_balanced(lab, self.cfg.batch_size_per_image, self.cfg.positive_fraction)
            pos.append(p + i * per_image)
            neg.append(q + i * per_image)
        pos, neg = torch.cat(pos), torch.cat(neg)
        sampled = torch.cat([pos, neg])
        box_loss = F.smooth_l1_loss(
            deltas.reshape(-1, 4)[pos], targets[pos], beta=self.cfg.smooth_l1_beta, reduction="sum"
        ) / max(1, sampled.numel())
        objectness_loss = F.binary_cross_entropy_with_logits(logits.reshape(-1)[sampled], labels[sampled])
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss}


def _flatten(x: Tensor, c: int) -> Tensor:
    """(N, A*C, Hl, Wl) -> (N, Hl*Wl*A, C), the anchors' order."""
    n, _, h, w = x.shape
    return x.view(n, -1, c, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, c)
