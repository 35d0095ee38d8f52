"""Exact mode against torchvision's models on real COCO images, at their real sizes.

For each model kind, torchvision's model is built as its ``*_resnet50_fpn`` builder composes it for COCO
checkpoints (FrozenBatchNorm, eps = 0), or as its ``*_resnet50_fpn_v2`` builder does (BatchNorm2d), with
random weights and trained-looking BN statistics (bench/reference.py), saved as a
torchvision checkpoint, and loaded by ``Predictor.from_preset(..., speed="exact")`` as a user would load
it. Both run every image of the folders given (default: tiny_coco's val2017 and train2017, 100 COCO
images), decoded once by ``detector.data.images.read_image``; torchvision gets that array as a float
tensor in [0, 1]. An image is "identical" when both give the same number of detections and equal boxes,
scores, labels, pasted masks and keypoints, bit for bit.

    python bench/parity.py [--models fasterrcnn_r50_fpn ...] [--images DIR ...] [--limit N] [--out FILE]

Prints a table and writes a JSON (default bench/parity.json; kept results: bench/results/).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.machine import commit, cpu_info  # noqa: E402
from detector.data.images import read_image  # noqa: E402
from detector.modeling.transform import resized_size  # noqa: E402
from detector.predictor import Predictor  # noqa: E402
from bench.reference import PRESETS, torchvision_reference  # noqa: E402

MODELS = PRESETS  # v1: fasterrcnn_r50_fpn, maskrcnn_r50_fpn, keypointrcnn_r50_fpn; v2: fasterrcnn_r50_fpn_v2, ...
TINY_COCO = ROOT.parent / "shared" / "data" / "tiny_coco"


def compare(ref: dict, det) -> dict:
    """How far our ``Detections`` are from torchvision's output dict for one image."""
    out = {"detections": len(det), "reference_detections": len(ref["boxes"])}
    same_count = len(det) == len(ref["boxes"])
    out["identical"] = same_count and torch.equal(det.boxes, ref["boxes"]) and torch.equal(det.scores, ref["scores"]) \
        and torch.equal(det.labels, ref["labels"])
    if not same_count:
        return out
    out["max_box_diff"] = float((det.boxes - ref["boxes"]).abs().max()) if len(det) else 0.0
    out["max_score_diff"] = float((det.scores - ref["scores"]).abs().max()) if len(det) else 0.0
    if "masks" in ref:
        same_masks = torch.equal(det.masks(), ref["masks"][:, 0] > 0.5)
        out["identical"] = out["identical"] and same_masks
    if "keypoints" in ref:
        same_kp = torch.equal(det.keypoints[..., :2], ref["keypoints"][..., :2]) and \
            torch.equal(det.keypoints[..., 2], ref["keypoints_scores"])
        out["identical"] = out["identical"] and same_kp
    return out


def run_model(preset: str, paths: list[Path], seed: int) -> dict:
    tv = torchvision_reference(preset, seed=seed, min_size=800, max_size=1333, eps=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "torchvision.pth"
        torch.save(tv.state_dict(), weights)  # as torchvision's checkpoints are saved
        ours = Predictor.from_preset(preset, weights, speed="exact")
    rows = []
    for path in paths:
        image = read_image(path)  # (H, W, 3) uint8
        start = time.perf_counter()
        with torch.no_grad():
            ref = tv([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
        det = ours.predict([image])[0]
        row = {"file": path.name, "size": list(image.shape[:2]),
               "resized": list(resized_size(*image.shape[:2], 800, 1333)), **compare(ref, det),
               "seconds": round(time.perf_counter() - start, 2)}
        rows.append(row)
        print(f"{preset:22} {path.name:18} {row['size'][0]:4}x{row['size'][1]:<4} dets {row['detections']:3} "
              f"identical {row['identical']!s:5} box {row.get('max_box_diff', '-')} score {row.get('max_score_diff', '-')}",
              flush=True)
    differing = [r for r in rows if not r["identical"]]
    return {
        "images": len(rows),
        "identical": len(rows) - len(differing),
        "differing": [r["file"] for r in differing],
        "max_box_diff": max((r.get("max_box_diff", float("inf")) for r in rows), default=0.0),
        "max_score_diff": max((r.get("max_score_diff", float("inf")) for r in rows), default=0.0),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--images", nargs="+", type=Path, default=[TINY_COCO / "val2017", TINY_COCO / "train2017"],
                   metavar="DIR", help="folders of images (default: tiny_coco val2017 and train2017)")
    p.add_argument("--limit", type=int, help="at most this many images per folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "parity.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = []
    for folder in args.images:
        if not folder.is_dir():
            p.error(f"{folder}: no such folder")
        paths += sorted(folder.glob("*.jpg"))[: args.limit]
    results = {name: run_model(name, paths, args.seed) for name in args.models}
    print(f"\n{'model':22} {'images':>6} {'identical':>9} {'max box diff':>12} {'max score diff':>14}")
    for name, r in results.items():
        print(f"{name:22} {r['images']:6} {r['identical']:9} {r['max_box_diff']:12.4g} {r['max_score_diff']:14.4g}")
    report = {"command": " ".join(sys.argv), "commit": commit(), "torch": torch.__version__, "python": platform.python_version(),
              "threads": args.threads, "cpu": cpu_info(), "weights": f"random, seed {args.seed}, trained-looking BN",
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["identical"] == r["images"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
