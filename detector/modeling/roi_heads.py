"""RoI heads: pool each proposal's features and run the box, mask and keypoint heads.

``forward`` trains (samples proposals against the ground truth, returns losses); ``predict`` infers.
Shape shorthand: N images, B RoIs over the batch, G ground-truth objects of an image, K_i detections of
image i (K'_i of them of the keypoint classes), P keypoints, S heatmap size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detector.modeling.box_coder import encode_boxes
from detector.modeling.box_head import BoxHead, BoxHeadConfig, box_inference, fastrcnn_loss
from detector.modeling.keypoint_head import (
    KeypointHead,
    KeypointHeadConfig,
    heatmaps_to_keypoints,
    keypoint_loss,
    keypoint_targets,
)
from detector.modeling.mask_head import MaskHead, MaskHeadConfig, mask_inference, mask_loss, mask_targets
from detector.modeling.poolers import MultiLevelRoIPooler
from detector.modeling.sampling import BELOW_LOW, BETWEEN, match, sample_balanced
from detector.modeling.speeds import InferenceOptions
from detector.structures import Detections, Targets


class RoIHeads(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        box: BoxHeadConfig = BoxHeadConfig(),
        mask: MaskHeadConfig | None = None,
        keypoint: KeypointHeadConfig | None = None,
        keypoint_labels: tuple[int, ...] = (),
    ) -> None:
        """``num_classes`` counts the background. ``keypoint_labels``: the classes the keypoint head
        serves; it learns from, and predicts for, objects of those classes only."""
        super().__init__()
        if keypoint is not None and not all(0 < label < num_classes for label in keypoint_labels):
            raise ValueError(f"keypoint_labels must be foreground labels in 1..{num_classes - 1}, got {keypoint_labels}")
        self.box_cfg = box
        self.mask_paste = mask.paste if mask is not None else "torchvision"
        self.box_pooler = MultiLevelRoIPooler(box.pool_size, sampling_ratio=box.sampling_ratio, aligned=box.aligned, kind=box.pooler,
                                              levels=box.pooler_levels)
        self.box_head = BoxHead(in_channels, num_classes, box)
        self.mask_pooler = self.mask_head = self.keypoint_pooler = self.keypoint_head = None
        if mask is not None:
            self.mask_pooler = MultiLevelRoIPooler(mask.pool_size, sampling_ratio=mask.sampling_ratio, aligned=box.aligned,
                                                   canonical_size=mask.canonical_size, levels=box.pooler_levels)
            self.mask_head = MaskHead(in_channels, num_classes, mask)
            self.mask_rois_per_image = mask.train_rois_per_image
        self.keypoint_labels = tuple(keypoint_labels)  # a plain tuple, not a buffer: the state_dict keeps its keys
        self.num_keypoints = keypoint.num_keypoints if keypoint is not None else 0
        self.keypoint_score = keypoint.score if keypoint is not None else "logit"
        if keypoint is not None:
            self.keypoint_pooler = MultiLevelRoIPooler(keypoint.pool_size, sampling_ratio=keypoint.sampling_ratio,
                                                       aligned=box.aligned, canonical_size=keypoint.canonical_size,
                                                       levels=box.pooler_levels)
            self.keypoint_head = KeypointHead(in_channels, keypoint)
            self.keypoint_rois_per_image = keypoint.train_rois_per_image

    def forward(self, features: list[Tensor], proposals: list[Tensor], targets: list[Targets]) -> dict[str, Tensor]:
        """Losses of the sampled proposals (boxes in padded-batch pixels)."""
        proposals, labels, matched = self._sample(proposals, targets)
        class_logits, box_deltas = self.box_head(self.box_pooler(features, proposals))
        gt_deltas = [
            encode_boxes(t.boxes[m.clamp(min=0)], p, self.box_cfg.box_weights) if len(t) else torch.zeros_like(p)
            for p, t, m in zip(proposals, targets, matched)
        ]
        losses = fastrcnn_loss(class_logits, box_deltas, torch.cat(labels), torch.cat(gt_deltas), self.box_cfg.smooth_l1_beta)
        if self.mask_head is not None:
            losses["loss_mask"] = self._mask_loss(features, proposals, labels, matched, targets)
        if self.keypoint_head is not None:
            losses["loss_keypoint"] = self._keypoint_loss(features, proposals, labels, matched, targets)
        return losses

    def _mask_loss(self, features: list[Tensor], proposals: list[Tensor], labels: list[Tensor],
                   matched: list[Tensor], targets: list[Targets]) -> Tensor:
        """The mask head learns from the foreground proposals (at most ``train_rois_per_image`` of them per
        image: the sampler gives them in random order)."""
        fg = [torch.where(lab > 0)[0][: self.mask_rois_per_image] for lab in labels]
        fg_boxes = [p[i] for p, i in zip(proposals, fg)]
        fg_matched = [m[i] for m, i in zip(matched, fg)]
        logits = self.mask_head(self.mask_pooler(features, fg_boxes))  # (B, C+1, M, M)
        m = logits.shape[-1]
        aligned = self.mask_paste == "detectron2"  # targets sampled as the paste rule's library does (mask_targets)
        gt = [mask_targets(t.masks, b, g, m, aligned) for t, b, g in zip(targets, fg_boxes, fg_matched) if len(b)]
        gt = torch.cat(gt) if gt else logits.new_zeros((0, m, m))
        return mask_loss(logits, torch.cat([lab[i] for lab, i in zip(labels, fg)]), gt)

    def _keypoint_loss(self, features: list[Tensor], proposals: list[Tensor], labels: list[Tensor],
                       matched: list[Tensor], targets: list[Targets]) -> Tensor:
        """The keypoint head learns from the proposals matched to objects of the keypoint classes: the
        others' keypoints (all v = 0 in COCO) would count for nothing, and are not even pooled. At most
        ``train_rois_per_image`` of them per image (the sampler gives them in random order)."""
        kp = [torch.where(self.has_keypoints(lab))[0][: self.keypoint_rois_per_image] for lab in labels]
        kp_boxes = [p[i] for p, i in zip(proposals, kp)]
        kp_matched = [m[i] for m, i in zip(matched, kp)]
        heatmaps = self.keypoint_head(self.keypoint_pooler(features, kp_boxes))  # (B, P, S, S)
        pairs = [keypoint_targets(t.keypoints[g], b, heatmaps.shape[-1]) for t, b, g in zip(targets, kp_boxes, kp_matched) if len(b)]
        if not pairs:
            return heatmaps.sum() * 0
        return keypoint_loss(heatmaps, torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))

    def has_keypoints(self, labels: Tensor) -> Tensor:
        """labels (Tensor[K], int64) -> Tensor[K] bool: whether the class has keypoints."""
        return torch.isin(labels, torch.tensor(self.keypoint_labels, dtype=labels.dtype, device=labels.device))

    @torch.no_grad()
    def _sample(self, proposals: list[Tensor], targets: list[Targets]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Adds the ground truth to the proposals and samples ``batch_size_per_image`` of them per image:
        (proposals, labels (0 = background), index of the matched object)."""
        cfg = self.box_cfg
        out_props, out_labels, out_matched = [], [], []
        for props, t in zip(proposals, targets):
            props = torch.cat([props, t.boxes.to(props.dtype)])
            if len(t):
                matched = match(box_iou(t.boxes, props), cfg.fg_iou_thresh, cfg.bg_iou_thresh, False)
                labels = t.labels[matched.clamp(min=0)].clone()
                labels[matched == BELOW_LOW] = 0
                labels[matched == BETWEEN] = -1
            else:
                matched = torch.zeros(props.shape[0], dtype=torch.int64, device=props.device)
                labels = torch.zeros_like(matched)
            pos, neg = sample_balanced(labels, cfg.batch_size_per_image, cfg.positive_fraction)
            keep = torch.cat([pos, neg])
            out_props.append(props[keep])
            out_labels.append(labels[keep])
            out_matched.append(matched[keep])
        return out_props, out_labels, out_matched

    @torch.no_grad()
    def predict(self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """Detections per image, in the (resized) pixels of ``image_sizes``."""
        class_logits, box_deltas = self.box_head(self.box_pooler(features, proposals))
        results = [
            Detections(boxes=b, scores=s, labels=lab, image_size=size)
            for (b, s, lab), size in zip(box_inference(class_logits, box_deltas, proposals, image_sizes, self.box_cfg), image_sizes)
        ]
        if self.mask_head is not None:
            self._predict_masks(features, results)
        if self.keypoint_head is not None:
            self._predict_keypoints(features, results)
        return results

    def for_inference(self, options: InferenceOptions) -> RoIHeads:
        """These heads with each head's inference form (``detector.modeling.fast_inference``); the
        poolers shared."""
        from detector.modeling.fast_inference import shared_copy  # not imported by the exact path

        heads = shared_copy(self)
        heads.box_head = self.box_head.for_inference(options)
        if self.mask_head is not None:
            heads.mask_head = self.mask_head.for_inference(options)
        if self.keypoint_head is not None:
            heads.keypoint_head = self.keypoint_head.for_inference(options)
        return heads

    def _predict_masks(self, features: list[Tensor], results: list[Detections]) -> None:
        boxes = [d.boxes for d in results]
        probs = mask_inference(self.mask_head(self.mask_pooler(features, boxes)), torch.cat([d.labels for d in results]))
        for d, p in zip(results, probs.split([len(b) for b in boxes])):
            d.mask_probs, d.mask_paste = p, self.mask_paste

    def _predict_keypoints(self, features: list[Tensor], results: list[Detections]) -> None:
        """Keypoints of the detections of the keypoint classes; the head runs on those boxes only, and
        the other detections' rows are zeros."""
        selected = [self.has_keypoints(d.labels) for d in results]  # [(K_i,) bool]
        boxes = [d.boxes[s] for d, s in zip(results, selected)]  # [(K'_i, 4)]
        if any(len(b) for b in boxes):
            heatmaps = self.keypoint_head(self.keypoint_pooler(features, boxes))  # (sum K'_i, P, S, S)
            keypoints = heatmaps_to_keypoints(heatmaps, torch.cat(boxes), self.keypoint_score)  # (sum K'_i, P, 3)
        else:
            keypoints = features[0].new_zeros((0, self.num_keypoints, 3))
        for d, s, k in zip(results, selected, keypoints.split([len(b) for b in boxes])):
            d.keypoints = d.boxes.new_zeros((len(d), self.num_keypoints, 3))  # (K_i, P, 3)
            d.keypoints[s] = k.to(d.keypoints.dtype)
            d.has_keypoints = s
