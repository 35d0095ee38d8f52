"""The shipped small_r18_fpn weights still know the synthetic shapes and figures: COCO AP as
``python -m detector.eval`` measures it (default speed), on synthetic images the model never saw, and on
the validation set its sidecar JSON reports (weights/small_r18_fpn.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.data.synthetic import write_synthetic
from detector.eval import main as eval_main
from detector.train import SYNTHETIC
from detector.weights.builtin import builtin_file

SIDECAR = json.loads(builtin_file("small_r18_fpn.json").read_text())
IOU_TYPES = ("bbox", "segm", "keypoints")
# On these 24 fresh images the shipped file scores 0.760 / 0.746 / 0.770 (the validation set's figures move a
# few points on other images). The floors are issue #19's box and mask targets, 0.06 and 0.05 under those
# figures, and for keypoints 0.11 under (above the target of 0.50); a random model scores below 0.01, and one
# that lost a head (a wrong key mapping, a broken paste) falls far below them.
FRESH_FLOORS = {"bbox": 0.70, "segm": 0.70, "keypoints": 0.66}


def _eval(images: Path, ann: Path, out: Path) -> dict[str, float]:
    assert eval_main(["--model", "small_r18_fpn", "--images", str(images), "--ann", str(ann),
                      "--metrics-out", str(out)]) == 0
    stats = json.loads(out.read_text())
    return {t: stats[t]["AP"] for t in IOU_TYPES}


def test_the_builtin_model_finds_shapes_masks_and_keypoints_in_images_it_never_saw(tmp_path: Path) -> None:
    # Seed 1: the training set is seed 0's (SYNTHETIC); every image has its own stream from (seed, split, index).
    assert SYNTHETIC["seed"] != 1
    fresh = write_synthetic(tmp_path / "fresh", train=0, val=24, size=SYNTHETIC["size"], seed=1)
    ap = _eval(fresh.val_images, fresh.val_annotations, tmp_path / "metrics.json")
    for iou_type, floor in FRESH_FLOORS.items():
        assert ap[iou_type] >= floor, (iou_type, ap)


@pytest.mark.slow
def test_the_sidecar_figures_are_what_detector_eval_measures_on_the_validation_set(tmp_path: Path) -> None:
    data = SIDECAR["dataset"]
    assert {k: data[k] for k in ("train", "val", "size", "seed")} == SYNTHETIC
    val = write_synthetic(tmp_path / "val", train=0, val=data["val"], size=data["size"], seed=data["seed"])
    ap = _eval(val.val_images, val.val_annotations, tmp_path / "metrics.json")
    for iou_type in IOU_TYPES:
        assert ap[iou_type] == pytest.approx(SIDECAR["synthetic_val_ap"][iou_type]["AP"], abs=0.01), (iou_type, ap)
