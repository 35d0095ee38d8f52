"""Golden fixtures from Detectron2 itself: its Faster, Mask and Keypoint R-CNN in model-zoo configurations
(narrow widths), on seeded random weights with trained-looking FrozenBN statistics, run by its own
DefaultPredictor (its resize, its model, its postprocessing) on a few generated images.

Writes, under OUT (default tests/fixtures/detectron2/):
  images.npz                      the input images, uint8 RGB (H, W, 3), keys image0, image1, ...
  CASE.pkl                        the weights, in Detectron2's model_final format ({"model": {name: array}})
  CASE.npz                        DefaultPredictor's outputs per image: boxes, scores, classes, and
                                  masks (bit-packed) / keypoints where the model has them
  manifest.json                   per case: the zoo config, the narrowing overrides, the input sizes, and
                                  the Detectron2 commit and torch version that made them
tests/detector/weights/test_detectron2_parity.py loads each CASE.pkl into our d2_* preset (narrowed as the
manifest says) and compares. Detectron2 is never a dependency of this project: run this in a throwaway
environment that has it (it needs no compiled ops for R-CNN inference), e.g.

  PYTHONPATH=/path/to/detectron2:/path/to/its/pure-python/deps python bench/detectron2_fixtures.py

(``detectron2.model_zoo`` is not imported: it needs pkg_resources.) The config files are read from
DETECTRON2_CONFIGS (default: the configs/ folder beside the detectron2 package).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEED = 0
MIN_SIZE, MAX_SIZE = 224, 320  # ResizeShortestEdge at test time: small images, a real resize
IMAGE_SIZES = [(150, 200), (180, 140), (96, 256)]  # (H, W)

# Narrow widths (Detectron2's own config options) so that the fixtures stay small.
NARROW = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16, "MODEL.RESNETS.WIDTH_PER_GROUP", 4,
    "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", 16,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", (16, 16, 16, 16),
]
# name -> (zoo config, extra overrides, std of the classifier's weights: the box head's features are of
# another scale on each trunk, and scores that saturate at 1.0 would tie; the keypoint heatmaps are scaled
# alike, by cls_std / CLS_STD)
CLS_STD = 0.15
CASES = {
    "faster_rcnn_R_50_FPN_3x": ("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", [], 0.15),
    "mask_rcnn_R_50_FPN_3x": ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", [], 0.15),
    "keypoint_rcnn_R_50_FPN_3x": ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml", [], 0.15),
    # ResNeXt-101 (FAIR's: stride in the 3x3, its pixel std), 4 groups x 2 channels at res2.
    "mask_rcnn_X_101_32x8d_FPN_3x": ("COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
                                     ["MODEL.RESNETS.NUM_GROUPS", 4, "MODEL.RESNETS.WIDTH_PER_GROUP", 2], 0.03),
    "keypoint_rcnn_X_101_32x8d_FPN_3x": ("COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml",
                                         ["MODEL.RESNETS.NUM_GROUPS", 4, "MODEL.RESNETS.WIDTH_PER_GROUP", 2], 0.004),
}


def make_images(seed: int = SEED) -> list:
    """Smooth backgrounds with a few filled shapes and a little noise: uint8 RGB (H, W, 3)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for h, w in IMAGE_SIZES:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([(x * 255 / w), (y * 255 / h), np.full((h, w), rng.uniform(0, 255))], axis=2)
        pil = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(6):
            x0, y0 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
            x1, y1 = x0 + rng.uniform(10, w / 2), y0 + rng.uniform(10, h / 2)
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
        noisy = np.asarray(pil).astype(np.int16) + rng.integers(-8, 9, (h, w, 3))
        images.append(noisy.clip(0, 255).astype(np.uint8))
    return images


def build_cfg(config: str, overrides: list, configs_dir: Path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(configs_dir / config))
    cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in NARROW + overrides])
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = MIN_SIZE, MAX_SIZE
    cfg.MODEL.WEIGHTS = ""
    return cfg


def randomise(model, seed: int, cls_std: float) -> None:
    """Trained-looking FrozenBN statistics (the stem's sized for 0..255 pixels where the std is 1), peaky
    class and objectness scores so that detections pass the 0.05 threshold, and peaky mask logits."""
    import torch
    from detectron2.layers import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, FrozenBatchNorm2d):
                c = m.weight.shape[0]
                stem = name.endswith("stem.conv1.norm") and float(model.pixel_std.max()) == 1.0
                var = (1e3 + 2e4 * torch.rand(c, generator=g)) if stem else (0.5 + 1.5 * torch.rand(c, generator=g))
                m.running_var.copy_(var)
                m.running_mean.copy_((30.0 if stem else 0.1) * torch.randn(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
        heads = model.roi_heads
        heads.box_predictor.cls_score.weight.normal_(0, cls_std, generator=g)
        heads.box_predictor.cls_score.bias.normal_(0, 0.5, generator=g)
        heads.box_predictor.bbox_pred.weight.normal_(0, 0.02, generator=g)
        model.proposal_generator.rpn_head.objectness_logits.weight.normal_(0, 0.1, generator=g)
        if hasattr(heads, "mask_head"):  # masks of a trained model: probabilities mostly far from 0.5
            heads.mask_head.predictor.weight.normal_(0, 0.5, generator=g)
        if hasattr(heads, "keypoint_head"):  # heatmap logits of the classifier's scale, not wilder
            heads.keypoint_head.score_lowres.weight.mul_(cls_std / CLS_STD)


def instances_to_arrays(instances) -> dict:
    import numpy as np

    out = {"boxes": instances.pred_boxes.tensor.numpy(), "scores": instances.scores.numpy(),
           "classes": instances.pred_classes.numpy()}
    if instances.has("pred_masks"):
        masks = instances.pred_masks.numpy()
        out["masks_shape"] = np.array(masks.shape)
        out["masks"] = np.packbits(masks.reshape(-1))
    if instances.has("pred_keypoints"):
        out["keypoints"] = instances.pred_keypoints.numpy()
    return out


def detectron2_commit() -> str:
    import detectron2

    src = Path(detectron2.__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return getattr(detectron2, "__version__", "unknown")


def run_case(name: str, config: str, overrides: list, cls_std: float, images: list, out: Path, configs_dir: Path) -> dict:
    import numpy as np
    import torch
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    cfg = build_cfg(config, overrides, configs_dir)
    torch.manual_seed(SEED)
    model = build_model(cfg)
    randomise(model, SEED, cls_std)
    weights = out / f"{name}.pkl"
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    with weights.open("wb") as f:
        pickle.dump({"model": state, "__author__": "bench/detectron2_fixtures.py"}, f, protocol=4)
    cfg.MODEL.WEIGHTS = str(weights)
    predictor = DefaultPredictor(cfg)  # builds its own model and loads the file: Detectron2 reads our .pkl
    arrays, counts, ranges = {}, [], []
    for i, rgb in enumerate(images):
        instances = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["instances"].to("cpu")  # its input is BGR
        counts.append(len(instances))
        ranges.append([round(float(instances.scores.min()), 4), round(float(instances.scores.max()), 4)])
        arrays.update({f"image{i}_{k}": v for k, v in instances_to_arrays(instances).items()})
    np.savez_compressed(out / f"{name}.npz", **arrays)
    print(f"{name:32s} detections per image {counts}  scores {ranges}  weights {weights.stat().st_size / 1e6:.2f} MB")
    return {"config": config, "overrides": NARROW + overrides, "detections": counts, "score_ranges": ranges}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "detectron2")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    import detectron2
    import numpy as np
    import torch

    configs_dir = Path(os.environ.get("DETECTRON2_CONFIGS", Path(detectron2.__file__).resolve().parent.parent / "configs"))
    torch.set_num_threads(1)  # the reference's numbers should not depend on the machine's thread count
    args.out.mkdir(parents=True, exist_ok=True)
    images = make_images()
    np.savez_compressed(args.out / "images.npz", **{f"image{i}": im for i, im in enumerate(images)})
    manifest = {"detectron2_commit": detectron2_commit(), "torch": torch.__version__, "seed": SEED,
                "min_size_test": MIN_SIZE, "max_size_test": MAX_SIZE, "cases": {}}
    for name in args.cases:
        config, overrides, cls_std = CASES[name]
        manifest["cases"][name] = run_case(name, config, overrides, cls_std, images, args.out, configs_dir)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
