"""The presets' names and the default one, without torch: the command lines and the service's settings
offer them before importing it. The builders are in ``detector.modeling.presets``."""

from __future__ import annotations

PRESET_NAMES = (
    "fasterrcnn_r50_fpn",
    "maskrcnn_r50_fpn",
    "keypointrcnn_r50_fpn",
    "fasterrcnn_r50_fpn_v2",
    "maskrcnn_r50_fpn_v2",
    "maskrcnn_x101_32x8d_fpn",
    "maskkeypointrcnn_r50_fpn",
    "small_r18_fpn",
    # Detectron2's model zoo (detector.modeling.detectron2_presets)
    *(f"d2_{kind}rcnn_{trunk}_fpn_3x" for kind in ("faster", "mask", "keypoint") for trunk in ("r50", "r101", "x101_32x8d")),
)
DEFAULT_PRESET = "small_r18_fpn"  # the built-in model, whose weights ship in weights/
