"""ONNX export (``python -m detector.export``) and the onnxruntime backend.

``graph``: the export-only forward over a padded batch; ``onnx_file``: writing it to a file with its
metadata; ``runtime``: ``OnnxPredictor``, the file behind the ``Predictor``'s interface; ``backends``: the
backend names and ``load_predictor``, the one call that builds a predictor of either backend.
"""

# The ONNX opset of the export: RoiAlign has coordinate_transformation_mode (aligned=True presets) from
# 16; torchvision's ONNX functions in onnxscript are written for 18. Here, without torch, for --help.
MIN_OPSET = 16
OPSET = 18
