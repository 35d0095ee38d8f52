"""python -m detector.export: a model to an ONNX file that the onnxruntime backend (or any ONNX client) runs.

    python -m detector.export --model small_r18_fpn --out model.onnx        # the preset's built-in weights
    python -m detector.export --weights runs/NAME/model_final.safetensors --out model.onnx
    python -m detector.predict --backend onnxruntime --onnx model.onnx --out out.json a.jpg

The graph's inputs and outputs, its opset and its limits: README, "Export to ONNX".
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Only what parsing the arguments needs: --help and argument errors answer before torch is imported.
from detector.export import MIN_OPSET, OPSET
from detector.modeling.preset_names import DEFAULT_PRESET, PRESET_NAMES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m detector.export", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(PRESET_NAMES),
                   help=f"model preset (default: the one --weights names in its metadata, else {DEFAULT_PRESET})")
    p.add_argument("--weights", type=Path, help="weights file (default: the preset's built-in weights)")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset, at least {MIN_OPSET} (default: {OPSET})")
    p.add_argument("--out", type=Path, required=True, help="the ONNX file to write")
    args = p.parse_args(argv)
    if args.opset < MIN_OPSET:
        p.error(f"--opset must be at least {MIN_OPSET} (RoiAlign with coordinate_transformation_mode), got {args.opset}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from detector.export.onnx_file import export_onnx
    from detector.predictor import Predictor

    try:
        predictor = Predictor.from_preset(args.model, args.weights, "cpu", speed="exact")
        path = export_onnx(predictor.model, args.out, name=predictor.name, opset=args.opset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{predictor.name} -> {path} (opset {args.opset})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
