"""python -m detector.predict: images in, JSON out.

    python -m detector.predict --model maskrcnn_r50_fpn --weights W.pth --out out.json a.jpg b.png
    python -m detector.predict --weights runs/NAME/model_final.safetensors --out out.json a.jpg
                                  # a file written by detector.train names its model: no --model

Writes a JSON list, one object per image: {"file", "width", "height", "detections": [{"bbox": [x1, y1,
x2, y2], "score", "label", "category", "mask": {"size", "counts"}, "keypoints": [[x, y, score], ...]}]};
"keypoints" only on detections of the model's keypoint classes (persons).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

# Only what parsing the arguments needs: --help and argument errors answer before torch is imported.
from detector import memory
from detector.mask_formats import DEFAULT_MASK_FORMAT, MASK_FORMATS
from detector.modeling.preset_names import DEFAULT_PRESET, PRESET_NAMES
from detector.modeling.speeds import DEFAULT_SPEED, SPEED_HELP, SPEED_NAMES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m detector.predict", description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, ...)")
    p.add_argument("--model", choices=sorted(PRESET_NAMES),
                   help=f"model preset (default: the one --weights names in its metadata, else {DEFAULT_PRESET})")
    p.add_argument("--weights", type=Path, help="weights file (default: the preset's built-in weights)")
    p.add_argument("--score-threshold", type=float, default=0.5, help="drop detections scoring below this")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--speed", default=DEFAULT_SPEED, choices=SPEED_NAMES, help=SPEED_HELP)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help=memory.FLAG_HELP)
    p.add_argument("--masks", default=DEFAULT_MASK_FORMAT, choices=MASK_FORMATS)
    p.add_argument("--out", type=Path, required=True, help="output JSON file")
    args = p.parse_args(argv)
    if not 0.0 <= args.score_threshold <= 1.0:
        p.error(f"--score-threshold must be in [0, 1], got {args.score_threshold}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from detector.data.images import read_image

    try:
        images = [read_image(path) for path in args.images]  # every file is checked before torch is imported
        if args.keep_freed_memory:
            memory.keep_freed_memory_for(args.device)
        from detector.predictor import Predictor

        predictor = Predictor.from_preset(args.model, args.weights, args.device, speed=args.speed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = []
    for start in range(0, len(images), args.batch_size):
        batch = images[start : start + args.batch_size]
        for path, det in zip(args.images[start:], predictor.predict(batch)):
            det = det[det.scores >= args.score_threshold]
            results.append({"file": str(path), **predictor.to_json(det, masks=args.masks)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results))
    count = sum(len(r["detections"]) for r in results)
    print(f"{len(results)} images, {count} detections -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
