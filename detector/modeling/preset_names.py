"""The model presets' names (``detector.modeling.presets``), without torch: the command lines list them
before importing it (tests/detector/modeling/test_preset_names.py keeps the two in step)."""

PRESET_NAMES = (
    "fasterrcnn_r50_fpn",
    "maskrcnn_r50_fpn",
    "keypointrcnn_r50_fpn",
    "maskrcnn_x101_32x8d_fpn",
    "maskkeypointrcnn_r50_fpn",
    "small_r18_fpn",
)
