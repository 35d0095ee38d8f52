"""Named model configurations: a plain dict of builder functions (no registry).

The ``*_r50_fpn`` and ``*_r50_fpn_v2`` COCO presets keep torchvision's layout so that its published checkpoints load
(91 class slots indexed by COCO category id, one anchor size per level, RoIAlign with aligned=False).
Our own presets use 3 octave scales x 3 aspect ratios per location and aligned RoIAlign (Detectron2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES
from detector.modeling.anchors import AnchorConfig, octave_sizes
from detector.modeling.backbone import BackboneConfig
from detector.modeling.box_head import BoxHeadConfig
from detector.modeling.detectron2_presets import detectron2_config
from detector.modeling.fpn import FPNConfig
from detector.modeling.keypoint_head import KeypointHeadConfig
from detector.modeling.mask_head import MaskHeadConfig
from detector.modeling.rcnn import ModelConfig
from detector.modeling.rpn import RPNConfig
from detector.modeling.transform import InputConfig

# torchvision's 91-slot COCO indexing: label == COCO category id, "N/A" for the unused ids.
COCO_CLASSES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# COCO's 80 classes in category-id order (Detectron2's contiguous ids), background first.
COCO80_CLASSES = ("__background__",) + tuple(name for name in COCO_CLASSES[1:] if name != "N/A")
# The built-in synthetic dataset's categories (detector.data.synthetic), in category-id order.
SYNTHETIC_CLASSES = ("__background__", "circle", "square", "triangle", "person")


def fasterrcnn_r50_fpn() -> ModelConfig:
    """torchvision's fasterrcnn_resnet50_fpn (COCO v1: 37.0 box AP)."""
    return ModelConfig(class_names=COCO_CLASSES)


def maskrcnn_r50_fpn() -> ModelConfig:
    """torchvision's maskrcnn_resnet50_fpn (COCO v1: 37.9 box AP, 34.6 mask AP)."""
    return replace(fasterrcnn_r50_fpn(), mask=MaskHeadConfig())


def fasterrcnn_r50_fpn_v2() -> ModelConfig:
    """torchvision's fasterrcnn_resnet50_fpn_v2 (COCO: 46.7 box AP; the recipe of Li et al., 2021,
    "Benchmarking Detection Transfer Learning with Vision Transformers"): BatchNorm in the trunk, the FPN
    and the box head, a 2-conv RPN head, a box head of 4 convs and 1 fc."""
    cfg = fasterrcnn_r50_fpn()
    return replace(cfg, backbone=replace(cfg.backbone, norm="bn"), fpn=replace(cfg.fpn, norm="bn"),
                   rpn=replace(cfg.rpn, conv_depth=2), box=replace(cfg.box, num_convs=4, norm="bn", num_fcs=1))


def maskrcnn_r50_fpn_v2() -> ModelConfig:
    """torchvision's maskrcnn_resnet50_fpn_v2 (COCO: 47.4 box AP, 41.8 mask AP): fasterrcnn_r50_fpn_v2 and
    a mask head with BatchNorm after its convs."""
    return replace(fasterrcnn_r50_fpn_v2(), mask=MaskHeadConfig(norm="bn"))


def keypointrcnn_r50_fpn() -> ModelConfig:
    """torchvision's keypointrcnn_resnet50_fpn (COCO v1: 54.6 box AP, 65.0 keypoint AP)."""
    return ModelConfig(class_names=("__background__", "person"), keypoint=KeypointHeadConfig(),
                       keypoint_names=COCO_KEYPOINT_NAMES)


def maskrcnn_x101_32x8d_fpn() -> ModelConfig:
    """Mask R-CNN on ResNeXt-101 32x8d (Detectron2's X101-FPN recipe: aligned RoIAlign)."""
    cfg = maskrcnn_r50_fpn()
    return replace(cfg, backbone=BackboneConfig(arch="resnext101_32x8d"), box=replace(cfg.box, aligned=True))


def maskkeypointrcnn_r50_fpn() -> ModelConfig:
    """Boxes, masks and person keypoints in one model (COCO classes; keypoints for persons)."""
    return replace(maskrcnn_r50_fpn(), keypoint=KeypointHeadConfig(), keypoint_names=COCO_KEYPOINT_NAMES)


def small_r18_fpn() -> ModelConfig:
    """Small enough to train on a 2-core CPU: a ResNet-18 of half widths (32..256 channels) with GroupNorm
    (trains from scratch), a 64-channel FPN, narrow heads, 64 sampled RoIs per image, 56 x 56 masks (the
    stick figures' limbs are a few pixels wide), 256-pixel images; boxes, masks and keypoints of the
    synthetic dataset's classes. Its widths are where a CPU training step's time went
    (bench/results/train_step_small_r18_fpn.json): the FPN's and RPN's 3x3 convs at stride 4, then the
    mask head and its RoIAlign backward. The mask and keypoint heads pool each box one FPN level finer than
    Mask R-CNN (canonical_size 448: boxes under 224 px from P2), where a figure's limbs are still a few
    feature pixels wide; it costs no time (RoIAlign samples per output bin)."""
    return ModelConfig(
        class_names=SYNTHETIC_CLASSES,
        backbone=BackboneConfig(arch="resnet18", norm="gn", trainable_stages=5, blocks=(2, 2, 2, 2), block="basic",
                                stem_channels=32, res2_out_channels=32),
        fpn=FPNConfig(out_channels=64, norm="gn"),
        anchors=AnchorConfig(sizes=octave_sizes((16, 32, 64, 128, 256)), aspect_ratios=(0.5, 1.0, 2.0)),
        rpn=RPNConfig(pre_nms_top_n_train=1000, post_nms_top_n_train=500, pre_nms_top_n_test=500, post_nms_top_n_test=200),
        box=BoxHeadConfig(aligned=True, fc_dim=256, batch_size_per_image=64, detections_per_image=50),
        # 56 x 56 masks (the figures' thin limbs). In training at most 8 RoIs per image through the mask head,
        # whose cost dominated a CPU step (bench/results/train_step_small_mask_head.json), and the keypoint head
        # (which saved no measurable time: the shipped weights were trained so); RoIAlign sampled adaptively,
        # as Detectron2 (one point per bin below a pixel). Masks trained on aligned targets and pasted as
        # Detectron2: torchvision's way puts a target back half a pixel off, a large part of a thin limb
        # (ground truth through target and paste: IoU 0.91 against 0.99, mask_head.mask_targets).
        # Four 64-channel convs, as Mask R-CNN's head is deep (two: mask AP 0.680 against 0.698 after the same
        # schedule, bench/results/recipe_small_r18_fpn_12000_mask2conv.json and recipe_small_r18_fpn_12000.json).
        mask=MaskHeadConfig(pool_size=28, num_convs=4, conv_dim=64, sampling_ratio=0, train_rois_per_image=8,
                            canonical_size=448.0, paste="detectron2"),
        keypoint=KeypointHeadConfig(num_convs=4, conv_dim=128, sampling_ratio=0, train_rois_per_image=8,
                                    canonical_size=448.0),
        input=InputConfig(min_size=256, max_size=384),  # the synthetic images are 256 px
        keypoint_names=COCO_KEYPOINT_NAMES,
    )


def _d2(kind: str, trunk: str) -> Callable[[], ModelConfig]:
    """The builder of Detectron2's {kind}_rcnn_{trunk}_FPN_3x (detector.modeling.detectron2_presets)."""
    def build() -> ModelConfig:
        if kind == "keypoint":
            return detectron2_config(("__background__", "person"), trunk, keypoints=True)
        return detectron2_config(COCO80_CLASSES, trunk, masks=kind == "mask")

    build.__doc__ = f"Detectron2's model zoo {kind}_rcnn_{trunk.upper()}_FPN_3x (published AP: weights/catalogue.json)."
    return build


# Detectron2's model zoo, named after its configs (configs/COCO-*/{kind}_rcnn_{trunk}_FPN_3x.yaml).
D2_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    f"d2_{kind}rcnn_{trunk}_fpn_3x": _d2(kind, trunk)
    for kind in ("faster", "mask", "keypoint") for trunk in ("r50", "r101", "x101_32x8d")
}

PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "fasterrcnn_r50_fpn": fasterrcnn_r50_fpn,
    "maskrcnn_r50_fpn": maskrcnn_r50_fpn,
    "keypointrcnn_r50_fpn": keypointrcnn_r50_fpn,
    "fasterrcnn_r50_fpn_v2": fasterrcnn_r50_fpn_v2,
    "maskrcnn_r50_fpn_v2": maskrcnn_r50_fpn_v2,
    "maskrcnn_x101_32x8d_fpn": maskrcnn_x101_32x8d_fpn,
    "maskkeypointrcnn_r50_fpn": maskkeypointrcnn_r50_fpn,
    "small_r18_fpn": small_r18_fpn,
    **D2_PRESETS,
}


@dataclass(frozen=True)
class TrainRecipe:
    """A preset's training defaults: what ``python -m detector.train`` does where no flag says otherwise.

    The rate is ``base_lr`` for ``per_images`` images a step, scaled linearly with the total batch (the
    linear scaling rule); ``per_images=None`` keeps ``base_lr`` at any batch. The defaults are torchvision's
    detection recipe (0.02 for 16 images a step, 8 GPUs x 2; step decay; 12 epochs; the preset's one size)."""

    base_lr: float = 0.02
    per_images: int | None = 16
    lr_schedule: str = "step"  # detector.training.schedules.SCHEDULES
    iters: int | None = None  # the schedule's length; None: DEFAULT_EPOCHS epochs
    warmup_iters: int | None = None  # None: min(1000, a tenth of the schedule)
    min_sizes: tuple[int, ...] | None = None  # shorter sides drawn from in training; None: the preset's min_size
    clip_grad_norm: float | None = None

    def lr(self, total_batch: int) -> float:
        """The rate for ``total_batch`` images a step (all processes together)."""
        if total_batch < 1:
            raise ValueError(f"total_batch must be at least 1, got {total_batch}")
        return self.base_lr if self.per_images is None else self.base_lr * total_batch / self.per_images


# The recipe of each preset; a preset not listed (or a custom config) trains with torchvision's.
RECIPES: dict[str, TrainRecipe] = {
    # Trains from scratch with GroupNorm, which keeps 0.02 stable at any batch (with the warm-up) and learns
    # the synthetic set much faster than 0.02 x batch / 16; measured with bench/train.py (bench/results/).
    # 16000 iterations: the same recipe's 12000-iteration schedule ended at mask AP 0.698 (float32)
    # (bench/results/recipe_small_r18_fpn_12000.json), this one's curve is recipe_small_r18_fpn.json.
    "small_r18_fpn": TrainRecipe(base_lr=0.02, per_images=None, lr_schedule="cosine", iters=16000, warmup_iters=200,
                                 min_sizes=(224, 256, 288), clip_grad_norm=10.0),
}


def train_recipe(name: str) -> TrainRecipe:
    """The training recipe of preset ``name``; torchvision's for any other name (a custom config)."""
    return RECIPES.get(name, TrainRecipe())


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
