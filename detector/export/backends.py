"""The engines a predictor can run on, and the one call that builds either.

Importing this module imports no torch: the CLIs list ``BACKENDS`` in their ``--help`` and the service's
settings validate ``DETECTOR_BACKEND`` before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path

BACKENDS = ("torch", "onnxruntime")
DEFAULT_BACKEND = "torch"
BACKEND_HELP = (
    "torch (default): the PyTorch model of --model/--weights, at --speed; onnxruntime: a file written by "
    "python -m detector.export, given by --onnx (its classes and input sizes come from the file)"
)


def backend_arguments_error(backend: str, onnx: object, model: object, weights: object) -> str | None:
    """What is wrong with a command line's --backend/--onnx/--model/--weights together, or None (for
    ``parser.error``; predict and eval share it)."""
    if (backend == "onnxruntime") != (onnx is not None):
        return "--backend onnxruntime and --onnx MODEL.onnx go together"
    if onnx is not None and (model or weights):
        return "--onnx is the model (its classes and sizes are in the file): give it without --model and --weights"
    return None


def load_predictor(backend: str, preset: str | None = None, weights: str | Path | None = None,
                   device: str = "cpu", *, speed: str | None = None, onnx: str | Path | None = None):
    """A ``detector.predictor.Predictor`` (backend "torch": ``Predictor.from_preset(preset, weights, device,
    speed=speed)``) or a ``detector.export.runtime.OnnxPredictor`` of the file ``onnx`` (backend
    "onnxruntime", on the CPU). ValueError for another backend, an onnxruntime backend without a file, or
    with torch's options (preset, weights, a device other than the CPU) that the file would override."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        if onnx is not None:
            raise ValueError(f"an ONNX file ({onnx}) is read by backend 'onnxruntime' only, not by 'torch'")
        from detector.predictor import Predictor

        return Predictor.from_preset(preset, weights, device, **({} if speed is None else {"speed": speed}))
    if onnx is None:
        raise ValueError("backend 'onnxruntime' needs the ONNX file written by python -m detector.export (--onnx)")
    given = {"preset": preset, "weights": weights}
    extra = [f"{k}={v}" for k, v in given.items() if v is not None]
    if extra:
        raise ValueError(f"backend 'onnxruntime' takes its model from {onnx}; {', '.join(extra)} would be ignored")
    if str(device) != "cpu":
        raise ValueError(f"backend 'onnxruntime' runs on the CPU here, got device {device!r}")
    from detector.export.runtime import OnnxPredictor

    return OnnxPredictor(onnx)
