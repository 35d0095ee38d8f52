"""ONNX export (``python -m detector.export``) and the onnxruntime backend.

``graph``: the export-only forward over a padded batch; ``onnx_file``: writing it to a file with its
metadata; ``runtime``: ``OnnxPredictor``, the file behind the ``Predictor``'s interface; ``backends``: the
backend names and ``load_predictor``, the one call that builds a predictor of either backend.
"""
