"""The R-CNN family as one model: backbone -> FPN -> RPN -> RoI heads (box, optional mask and keypoint).

``forward(images, targets)`` returns the loss dict (training); ``predict(images)`` returns one
``Detections`` per image in that image's pixels (inference). ``build_model(cfg)`` composes it from a
``ModelConfig``; the named configurations are in ``detector.modeling.presets``.
``optimize_for_inference()`` gives a faster copy for ``predict``, built from each block's inference form
(``detector.modeling.fast_inference``, which the exact path never imports).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from detector.modeling.anchors import AnchorConfig
from detector.modeling.backbone import BackboneConfig, ResNetBackbone
from detector.modeling.box_head import BoxHeadConfig
from detector.modeling.fpn import FPN, FPNConfig
from detector.modeling.keypoint_head import KeypointHeadConfig
from detector.modeling.layout import to_nchw
from detector.modeling.mask_head import MaskHeadConfig
from detector.modeling.roi_heads import RoIHeads
from detector.modeling.rpn import RPN, RPNConfig
from detector.modeling.speeds import InferenceOptions
from detector.modeling.transform import (
    InputConfig,
    batch_images,
    normalize,
    padded_size,
    preprocess,
    rescale_detections,
    to_model_pixels,
)
from detector.structures import Detections, Targets


@dataclass(frozen=True)
class ModelConfig:
    class_names: tuple[str, ...]  # index == label; class_names[0] is the background
    backbone: BackboneConfig = BackboneConfig()
    fpn: FPNConfig = FPNConfig()
    anchors: AnchorConfig = AnchorConfig()
    rpn: RPNConfig = RPNConfig()
    box: BoxHeadConfig = BoxHeadConfig()
    mask: MaskHeadConfig | None = None
    keypoint: KeypointHeadConfig | None = None
    input: InputConfig = field(default_factory=InputConfig)
    keypoint_names: tuple[str, ...] = ()
    # The classes whose detections get keypoints (COCO annotates them on persons only); used only with a
    # keypoint head. () keeps the head (its weights still load) but never runs it.
    keypoint_classes: tuple[str, ...] = ("person",)

    def __post_init__(self) -> None:
        if self.keypoint is None:
            return
        unknown = [name for name in self.keypoint_classes if name not in self.class_names[1:]]
        if unknown:
            raise ValueError(
                f"keypoint_classes {self.keypoint_classes} name {unknown}, not among the class names "
                f"{self.class_names[1:]}: set ModelConfig.keypoint_classes to the classes that have keypoints"
            )

    @property
    def num_classes(self) -> int:
        """Including the background."""
        return len(self.class_names)

    @property
    def keypoint_labels(self) -> tuple[int, ...]:
        """The labels of ``keypoint_classes`` (every label of a name that ``class_names`` repeats)."""
        names = set(self.keypoint_classes)
        return tuple(label for label, name in enumerate(self.class_names) if label > 0 and name in names)


class RCNN(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNetBackbone(cfg.backbone)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn)
        self.rpn = RPN(self.fpn.out_channels, cfg.anchors, cfg.rpn)
        self.roi_heads = RoIHeads(self.fpn.out_channels, cfg.num_classes, box=cfg.box, mask=cfg.mask,
                                  keypoint=cfg.keypoint, keypoint_labels=cfg.keypoint_labels)
        self.inference_options = InferenceOptions()  # exact; see optimize_for_inference
        self.inference_only = False  # True once BN is folded or bf16 wrappers are in: forward refuses

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def features(self, batch: Tensor) -> list[Tensor]:
        """(N, 3, Hp, Wp) normalised batch -> [P2, ..., P6] (channels-last if the options say so)."""
        if self.inference_options.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.fpn(self.backbone(batch))

    def forward(self, images: list[Tensor], targets: list[Targets]) -> dict[str, Tensor]:
        """Training losses. Images (3, H, W) arrive at their training size (the data pipeline resizes and
        flips); targets are in those images' pixels."""
        if self.inference_only:
            raise RuntimeError("this copy was optimised for inference (BN folded or bf16): train the original model")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        images = [normalize(to_model_pixels(i, self.cfg.input), self.cfg.input) for i in images]
        batch = batch_images(images, self.cfg.input.size_divisible)
        sizes = [tuple(i.shape[-2:]) for i in images]
        features = self.features(batch)
        proposals, losses = self.rpn(features, sizes, tuple(batch.shape[-2:]), [t.boxes for t in targets])
        losses.update(self.roi_heads(features, proposals, targets))
        return losses

    @torch.inference_mode()
    def predict(self, images: list[Tensor], *, pad_together: bool = False) -> list[Detections]:
        """Detections for each image (3, H, W), float in [0, 1] or uint8, in that image's pixels.

        Images are padded to a common size to run as one batch, and padding moves detections near an
        image's border a little. So by default images run in groups of equal padded size, and each
        image's detections are those it gets alone, whatever it is batched with. ``pad_together``
        pads them all to one batch, as torchvision's models do."""
        cfg = self.cfg.input
        original_sizes = [tuple(i.shape[-2:]) for i in images]
        images = [preprocess(i, cfg, banded=self.inference_options.banded_resize) for i in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            key = (0, 0) if pad_together else padded_size(image.shape[-2:], cfg.size_divisible)
            groups.setdefault(key, []).append(i)
        detections: list[Detections | None] = [None] * len(images)
        for indices in groups.values():
            for i, det in zip(indices, self._predict_batch([images[i] for i in indices])):
                detections[i] = rescale_detections(det, original_sizes[i])
        return detections

    def _predict_batch(self, images: list[Tensor]) -> list[Detections]:
        """Resized, normalised images -> detections in those images' pixels."""
        sizes = [tuple(i.shape[-2:]) for i in images]
        batch = batch_images(images, self.cfg.input.size_divisible)
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=self.inference_options.bf16):
            features = self.features(batch)
        proposals, _ = self.rpn(features, sizes, tuple(batch.shape[-2:]))
        # RoIAlign reads float32 NCHW; converted once here, not at every pooling (a no-op when exact).
        features = [to_nchw(f.float()) for f in features]
        return self.roi_heads.predict(features, proposals, sizes)

    def optimize_for_inference(
        self, *, fuse_bn: bool = True, channels_last: bool = True, nnpack: bool = True, bf16: bool = False,
        banded_resize: bool = True,
    ) -> RCNN:
        """A copy of this model, in eval mode, faster at ``predict``; this model is left as it is (it may
        be training). The defaults are Predictor's speed="fast"; see ``detector.modeling.fast_inference``.

        ``fuse_bn``: fold FrozenBatchNorm and BatchNorm into the convs (GN models have none to fold) and run each
        bottleneck's ReLUs and residual add inside its convs. ``channels_last``: backbone, FPN (and RPN
        head without NNPACK) in NHWC, and the mask head's deconv and 1x1 predictor. ``nnpack``: 3x3
        stride-1 convs by NNPACK on the CPU, and the RPN head's 1x1 convs as one matmul. ``bf16``: convs
        and linear layers under bfloat16 autocast (then no NNPACK). ``banded_resize``: each input image
        resized band by band before it is normalised, without a full-size float copy. A copy with BN
        folded or bf16 cannot train (``forward`` raises) and its state_dict has other keys: save and
        train the original.

        Each block builds its own inference form; what a form leaves as it is (the box head, the poolers,
        NNPACK's convs, GroupNorms...) shares this model's tensors rather than copying them: training this
        model moves those in the copy too, so optimise it again after training."""
        from detector.modeling.fast_inference import foldable, shared_copy  # not imported by the exact path

        if self.inference_options != InferenceOptions():
            raise ValueError(f"this model is already optimised ({self.inference_options}): optimise the original")
        options = InferenceOptions(fuse_bn=fuse_bn, channels_last=channels_last, nnpack=nnpack and not bf16, bf16=bf16,
                                   banded_resize=banded_resize)
        fast = shared_copy(self)
        fast.backbone = self.backbone.for_inference(options)
        fast.fpn = self.fpn.for_inference(options)
        fast.rpn = self.rpn.for_inference(options)
        fast.roi_heads = self.roi_heads.for_inference(options)
        fast.inference_options = options
        fast.inference_only = options.bf16 or (options.fuse_bn and any(foldable(m) for m in self.modules()))
        return fast.eval()


def build_model(cfg: ModelConfig) -> RCNN:
    return RCNN(cfg)
