"""The export-only forward: an ``RCNN``'s inference as one graph over a padded batch, for ONNX.

``ExportGraph(model)`` calls the model's own modules and free functions (trunk, FPN, RPN head, anchors,
box coder, box/mask/keypoint heads, ``mask_inference``) with its weights; what it writes anew is only the
part of ``RCNN.predict`` that loops over images in Python: the per-image selection of proposals and
detections. Here it is vectorised over the batch, so that the batch size stays an input of the graph:

- NMS per image and per group (FPN level for proposals, class for detections) is one
  ``torchvision.ops.nms`` over all boxes of the batch, each moved by an offset of its (image, group) id,
  as ``torchvision.ops.batched_nms`` does for one image (its "coordinate trick");
- the top-k per image is a rank within the image (a cumulative count over the boxes sorted by score)
  compared with k.

The eager model is left as it is: this module only reads it.

Input: ``images`` float32 (N, 3, Hp, Wp), the batch as ``RCNN`` builds it (resized, normalised,
zero-padded to multiples of 32: ``detector.modeling.transform``) and ``image_sizes`` int64 (N, 2), each
image's resized (h, w) inside it. Outputs, one row per detection over the batch (D rows, by decreasing
score over the batch, so each image's rows are best first): ``batch_index`` int64 (D,), ``boxes`` float32 (D, 4) xyxy in the
resized image's pixels, ``scores`` (D,), ``labels`` int64 (D,); with a mask head ``mask_probs`` (D, M, M),
in-box probabilities of the detection's class; with a keypoint head ``keypoint_heatmaps`` (D', P, S, S),
the heatmap logits of the D' detections of the keypoint classes, in their order among the D.

Shape shorthand: N images, L levels, R anchors per image, K proposals kept per image before NMS, P
proposals over the batch, C+1 classes, D detections over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms, roi_align, roi_pool

from detector.modeling.anchors import _grid_anchors
from detector.modeling.box_coder import decode_boxes
from detector.modeling.mask_head import mask_inference
from detector.modeling.poolers import MultiLevelRoIPooler
from detector.modeling.rcnn import RCNN
from detector.modeling.rpn import _flatten

OUTPUT_NAMES = ("batch_index", "boxes", "scores", "labels")


class ExportGraph(nn.Module):
    def __init__(self, model: RCNN) -> None:
        """``model`` in eval mode (ValueError otherwise): the graph reads it, and changes nothing of it."""
        super().__init__()
        if model.training:
            raise ValueError("ExportGraph needs a model in eval mode (model.eval()): export is inference")
        self.model = model
        self.keypoint_labels = tuple(model.cfg.keypoint_labels) if model.cfg.keypoint is not None else ()

    def output_names(self) -> tuple[str, ...]:
        names = OUTPUT_NAMES
        if self.model.roi_heads.mask_head is not None:
            names += ("mask_probs",)
        if self.model.roi_heads.keypoint_head is not None:
            names += ("keypoint_heatmaps",)
        return names

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        model, heads = self.model, self.model.roi_heads
        features = model.features(images)
        proposals, proposal_image = self._proposals(features, image_sizes, images.shape[-2:])
        batch_index, boxes, scores, labels = self._detections(features, proposals, proposal_image, image_sizes)
        outputs = (batch_index, boxes, scores, labels)
        if heads.mask_head is not None:
            logits = heads.mask_head(pool(heads.mask_pooler, features, boxes, batch_index))  # (D, C+1, M, M)
            outputs += (mask_inference(logits, labels),)
        if heads.keypoint_head is not None:
            selected = torch.zeros_like(labels, dtype=torch.bool)
            for label in self.keypoint_labels:
                selected = selected | (labels == label)
            index = torch.nonzero(selected).flatten()  # (D',)
            pooled = pool(heads.keypoint_pooler, features, boxes[index], batch_index[index])
            outputs += (heads.keypoint_head(pooled),)  # (D', P, S, S)
        return outputs

    def _proposals(self, features: list[Tensor], image_sizes: Tensor, padded: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``RPN.forward`` at inference, for the whole batch: proposals (P, 4) and their image (P,)."""
        rpn = self.model.rpn
        cfg = rpn.cfg
        logits, deltas = rpn.head(features)
        anchors = torch.cat([
            _grid_anchors(base.to(features[0].device), (padded[0] // f.shape[-2], padded[1] // f.shape[-1]), f.shape[-2:])
            for base, f in zip(rpn.anchor_generator.cell_anchors, features)
        ])  # (R, 4)
        per_level = [x.shape[1] * x.shape[2] * x.shape[3] for x in logits]  # Hl*Wl*A
        logits = torch.cat([_flatten(x, 1) for x in logits], dim=1).squeeze(2)  # (N, R)
        deltas = torch.cat([_flatten(x, 4) for x in deltas], dim=1)  # (N, R, 4)
        n = deltas.shape[0]
        boxes = decode_boxes(deltas.reshape(-1, 4), anchors.repeat(n, 1)).view(n, -1, 4)  # (N, R, 4)
        top_idx, levels, start = [], [], 0
        for level, count in enumerate(per_level):
            k = torch.sym_min(cfg.pre_nms_top_n_test, count)
            idx = logits[:, start : start + count].topk(k, dim=1).indices + start  # (N, k)
            top_idx.append(idx)
            levels.append(torch.full_like(idx, level))
            start += count
        top_idx, levels = torch.cat(top_idx, dim=1), torch.cat(levels, dim=1)  # (N, K)
        batch = torch.arange(n, device=boxes.device)[:, None].expand_as(top_idx)  # (N, K)
        boxes, scores = boxes[batch, top_idx].reshape(-1, 4), torch.sigmoid(logits[batch, top_idx]).reshape(-1)
        image, levels = batch.reshape(-1), levels.reshape(-1)  # (N*K,)
        boxes = clip_to_sizes(boxes, image_sizes[image])
        keep = torch.nonzero(is_large(boxes, cfg.min_size) & (scores >= cfg.score_thresh)).flatten()
        boxes, scores, image, levels = boxes[keep], scores[keep], image[keep], levels[keep]
        keep = batched_nms_over_images(boxes, scores, image * len(per_level) + levels, cfg.nms_thresh,
                                      _span(image_sizes))
        keep = keep[rank_in_image(image[keep], n) < cfg.post_nms_top_n_test]
        return boxes[keep], image[keep]

    def _detections(self, features: list[Tensor], proposals: Tensor, image: Tensor,
                    image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``box_inference`` for the whole batch: (batch_index, boxes, scores, labels) of the D detections."""
        heads = self.model.roi_heads
        cfg = heads.box_cfg
        class_logits, box_deltas = heads.box_head(pool(heads.box_pooler, features, proposals, image))
        num_classes = class_logits.shape[1]
        boxes = decode_boxes(box_deltas, proposals, cfg.box_weights).view(-1, num_classes, 4)  # (P, C+1, 4)
        scores = F.softmax(class_logits, -1)  # (P, C+1)
        p = boxes.shape[0]
        boxes = clip_to_sizes(boxes[:, 1:].reshape(-1, 4), image_sizes[image].repeat_interleave(num_classes - 1, dim=0))
        scores = scores[:, 1:].reshape(-1)  # (P*C,)
        labels = torch.arange(1, num_classes, device=boxes.device).repeat(p)  # (P*C,)
        image = image[:, None].expand(p, num_classes - 1).reshape(-1)
        keep = torch.nonzero((scores > cfg.score_thresh) & is_large(boxes, 1e-2)).flatten()
        boxes, scores, labels, image = boxes[keep], scores[keep], labels[keep], image[keep]
        keep = batched_nms_over_images(boxes, scores, image * num_classes + labels, cfg.nms_thresh, _span(image_sizes))
        keep = keep[rank_in_image(image[keep], image_sizes.shape[0]) < cfg.detections_per_image]
        return image[keep], boxes[keep], scores[keep], labels[keep]


def pool(pooler: MultiLevelRoIPooler, features: list[Tensor], boxes: Tensor, image: Tensor) -> Tensor:
    """``MultiLevelRoIPooler.forward`` with each box's image given as a tensor (B,) rather than by a list
    of per-image tensors: boxes (B, 4) -> Tensor[B, C, S, S]."""
    rois = torch.cat([image[:, None].to(boxes.dtype), boxes], dim=1)  # (B, 5)
    levels = pooler.level_of(boxes)  # (B,)
    out = features[0].new_zeros((boxes.shape[0], features[0].shape[1], *pooler.output_size))
    for level, scale in enumerate(pooler.scales):
        idx = torch.nonzero(levels == level).flatten()
        if pooler.kind == "pool":
            pooled = roi_pool(features[level], rois[idx], pooler.output_size, spatial_scale=scale)
        else:
            pooled = roi_align(features[level], rois[idx], pooler.output_size, scale, pooler.sampling_ratio, pooler.aligned)
        out = out.index_put((idx,), pooled)
    return out


def clip_to_sizes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """``clip_boxes_to_image`` with each box's own (h, w): boxes (B, 4), sizes (B, 2) int -> (B, 4)."""
    h, w = sizes[:, 0:1].to(boxes.dtype), sizes[:, 1:2].to(boxes.dtype)
    x = torch.minimum(boxes[:, 0::2].clamp(min=0), w)  # (B, 2)
    y = torch.minimum(boxes[:, 1::2].clamp(min=0), h)
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


def is_large(boxes: Tensor, min_size: float) -> Tensor:
    """``remove_small_boxes`` as a mask: (B, 4) -> (B,) bool, both sides at least ``min_size``."""
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def batched_nms_over_images(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, span: Tensor) -> Tensor:
    """Indices of the boxes (B, 4) that NMS within each group (B,) keeps, by decreasing score: one NMS
    with the groups moved apart by ``span`` (0-dim, above every coordinate: the boxes are clipped to the
    padded batch), ``torchvision.ops.batched_nms``'s coordinate trick."""
    offsets = groups.to(boxes.dtype) * span  # (B,)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def rank_in_image(image: Tensor, n: int) -> Tensor:
    """For boxes sorted by decreasing score, each one's rank among those of its image: (B,) -> (B,)."""
    onehot = (image[:, None] == torch.arange(n, device=image.device)[None]).to(torch.int64)  # (B, N)
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def _span(image_sizes: Tensor) -> Tensor:
    """A 0-dim float above every coordinate of boxes clipped to ``image_sizes`` (N, 2)."""
    return image_sizes.max().to(torch.float32) + 1
