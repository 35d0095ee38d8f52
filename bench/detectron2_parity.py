"""How close our engine comes to Detectron2 on its golden fixtures (tests/fixtures/detectron2/, made by
bench/detectron2_fixtures.py): per zoo configuration and speed mode, the largest differences from what
Detectron2's DefaultPredictor detected (boxes and keypoints in pixels, scores, mask pixels that differ).

    python bench/detectron2_parity.py [--out bench/detectron2_parity.json]

Prints a table and writes a JSON with the CPU (kept results: bench/results/). The fixtures' reading
(``golden``, ``narrowed``, ``fixture_model``) is shared with tests/detector/weights/test_detectron2_parity.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.machine import commit, cpu_info  # noqa: E402
from detector.modeling.presets import get_preset  # noqa: E402
from detector.modeling.rcnn import RCNN, ModelConfig  # noqa: E402
from detector.weights import load_weights  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "detectron2"
# The zoo config each fixture was made from -> our preset of that name.
PRESETS = {
    "faster_rcnn_R_50_FPN_3x": "d2_fasterrcnn_r50_fpn_3x",
    "mask_rcnn_R_50_FPN_3x": "d2_maskrcnn_r50_fpn_3x",
    "keypoint_rcnn_R_50_FPN_3x": "d2_keypointrcnn_r50_fpn_3x",
    "mask_rcnn_X_101_32x8d_FPN_3x": "d2_maskrcnn_x101_32x8d_fpn_3x",
    "keypoint_rcnn_X_101_32x8d_FPN_3x": "d2_keypointrcnn_x101_32x8d_fpn_3x",
}
BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnext101_32x8d": (3, 4, 23, 3)}  # RESNETS.DEPTH


def manifest() -> dict:
    return json.loads((FIXTURES / "manifest.json").read_text())


def narrowed(preset: str, overrides: list, sizes: dict) -> ModelConfig:
    """Our preset with a fixture's narrowing (Detectron2's config overrides, as our config fields) and its
    test-time sizes (``sizes``: the manifest's min_size_test, max_size_test)."""
    o = dict(zip(overrides[::2], overrides[1::2]))
    cfg = get_preset(preset)
    backbone = replace(cfg.backbone, blocks=BLOCKS[cfg.backbone.arch], stem_channels=o["MODEL.RESNETS.STEM_OUT_CHANNELS"],
                       res2_out_channels=o["MODEL.RESNETS.RES2_OUT_CHANNELS"], groups=o.get("MODEL.RESNETS.NUM_GROUPS", 1),
                       width_per_group=o["MODEL.RESNETS.WIDTH_PER_GROUP"])
    cfg = replace(cfg, backbone=backbone, fpn=replace(cfg.fpn, out_channels=o["MODEL.FPN.OUT_CHANNELS"]),
                  box=replace(cfg.box, fc_dim=o["MODEL.ROI_BOX_HEAD.FC_DIM"]),
                  input=replace(cfg.input, min_size=sizes["min_size_test"], max_size=sizes["max_size_test"]))
    if cfg.mask is not None:
        cfg = replace(cfg, mask=replace(cfg.mask, conv_dim=o["MODEL.ROI_MASK_HEAD.CONV_DIM"]))
    if cfg.keypoint is not None:
        dims = o["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS"]
        cfg = replace(cfg, keypoint=replace(cfg.keypoint, num_convs=len(dims), conv_dim=dims[0]))
    return cfg


def fixture_model(case: str) -> RCNN:
    """Our model of fixture ``case``, its .pkl loaded (restricted reader, Detectron2's names renamed)."""
    m = manifest()
    model = RCNN(narrowed(PRESETS[case], m["cases"][case]["overrides"], m)).eval()
    load_weights(model, FIXTURES / f"{case}.pkl")
    return model


def images() -> list[torch.Tensor]:
    """The fixtures' input images, (3, H, W) uint8 RGB."""
    with np.load(FIXTURES / "images.npz") as f:
        return [torch.from_numpy(f[f"image{i}"]).permute(2, 0, 1).contiguous() for i in range(len(f.files))]


def golden(case: str, count: int) -> list[dict]:
    """What Detectron2 detected on each image: boxes, scores, classes (0-based), masks, keypoints."""
    with np.load(FIXTURES / f"{case}.npz") as f:
        arrays = {k: f[k] for k in f.files}
    out = []
    for i in range(count):
        ref = {k.split("_", 1)[1]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(f"image{i}_")}
        if "masks" in ref:
            shape = tuple(ref.pop("masks_shape").tolist())
            bits = np.unpackbits(ref["masks"].numpy())[: int(np.prod(shape))]
            ref["masks"] = torch.from_numpy(bits.reshape(shape).astype(bool))
        out.append(ref)
    return out


def differences(det, ref: dict) -> dict:
    """The largest differences of ``det`` from ``ref``, detection by detection in order (exact mode), or
    from each reference box to our nearest of its label (fast mode, whose order may differ)."""
    out = {"detections": len(det), "reference": len(ref["boxes"]), "labels_equal": bool(
        len(det) == len(ref["boxes"]) and torch.equal(det.labels, ref["classes"] + 1))}
    if not out["labels_equal"]:
        dist = (ref["boxes"][:, None] - det.boxes[None]).abs().amax(dim=2)  # (K_ref, K) L-inf
        dist[(ref["classes"] + 1)[:, None] != det.labels[None]] = float("inf")
        nearest, idx = dist.min(dim=1)
        return {**out, "box_px": nearest.max().item(), "score": (ref["scores"] - det.scores[idx]).abs().max().item()}
    out["box_px"] = (det.boxes - ref["boxes"]).abs().max().item()
    out["score"] = (det.scores - ref["scores"]).abs().max().item()
    if "masks" in ref:
        out["mask_px_differing"] = int((det.masks() != ref["masks"]).sum())
        out["mask_px"] = int(ref["masks"].numel())
    if "keypoints" in ref:
        out["keypoint_px"] = (det.keypoints[..., :2] - ref["keypoints"][..., :2]).abs().max().item()
        out["keypoint_score"] = (det.keypoints[..., 2] - ref["keypoints"][..., 2]).abs().max().item()
    return out


def _worst(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r if k not in ("labels_equal",)}
    out = {k: max(r[k] for r in rows if k in r) for k in keys if k not in ("mask_px_differing", "mask_px")}
    if any("mask_px" in r for r in rows):
        out["mask_px_differing"] = sum(r.get("mask_px_differing", 0) for r in rows)
        out["mask_px"] = sum(r.get("mask_px", 0) for r in rows)
    out["labels_equal"] = all(r["labels_equal"] for r in rows)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "detectron2_parity.json")
    args = parser.parse_args(argv)
    inputs, report = images(), {"machine": cpu_info(), "commit": commit(), "torch_threads": torch.get_num_threads(),
                                "fixtures": {k: v for k, v in manifest().items() if k != "cases"}, "rows": []}
    print(f"{'case':32} {'speed':6} {'dets':>5} {'labels':>6} {'box px':>9} {'score':>9} {'mask px':>13} {'kp px':>9}")
    for case in PRESETS:
        exact = fixture_model(case)
        refs = golden(case, len(inputs))
        for speed, model in (("exact", exact), ("fast", exact.optimize_for_inference())):
            worst = _worst([differences(model.predict([im])[0], ref) for im, ref in zip(inputs, refs)])
            report["rows"].append({"case": case, "preset": PRESETS[case], "speed": speed, **worst})
            masks = f"{worst['mask_px_differing']}/{worst['mask_px']}" if "mask_px" in worst else "-"
            kp = f"{worst['keypoint_px']:.2e}" if "keypoint_px" in worst else "-"
            print(f"{case:32} {speed:6} {worst['detections']:5} {str(worst['labels_equal']):>6} {worst['box_px']:9.2e} "
                  f"{worst['score']:9.2e} {masks:>13} {kp:>9}")
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
