"""Detectron2's checkpoints on our engine give Detectron2's detections.

The golden fixtures (tests/fixtures/detectron2/, made by bench/detectron2_fixtures.py with Detectron2
itself; the README's Detectron2 section says how) hold, per zoo configuration, narrow seeded random
weights in Detectron2's model_final .pkl format and what Detectron2's DefaultPredictor detected with
them on three generated images. Each is loaded into our d2_* preset, narrowed as the fixture's manifest
says, and compared with the torchvision parity tests' tolerances: ``--speed exact`` within
tests/detector/modeling/test_parity.py's, ``--speed fast`` within test_fast_inference.py's.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.mask_paste import paste_mask_probs
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import RCNN, ModelConfig
from detector.weights import load_weights
from tests.detector.modeling.test_fast_inference import assert_same_detections
from tests.inputs import missing_input

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "detectron2"
BOX_TOL = 1e-3  # px, as test_parity.py
SCORE_TOL = 1e-5
KEYPOINT_SCORE_TOL = 1e-4
# Boxes within BOX_TOL move the pasted masks' sampling points a little, so a pixel whose probability is
# this close to the 0.5 threshold may fall on the other side; no other pixel may differ.
MASK_PROB_TOL = 1e-3
# The zoo config each fixture was made from -> our preset of that name.
PRESETS = {
    "faster_rcnn_R_50_FPN_3x": "d2_fasterrcnn_r50_fpn_3x",
    "mask_rcnn_R_50_FPN_3x": "d2_maskrcnn_r50_fpn_3x",
    "keypoint_rcnn_R_50_FPN_3x": "d2_keypointrcnn_r50_fpn_3x",
    "mask_rcnn_X_101_32x8d_FPN_3x": "d2_maskrcnn_x101_32x8d_fpn_3x",
}
BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnext101_32x8d": (3, 4, 23, 3)}  # RESNETS.DEPTH


def _manifest() -> dict:
    path = FIXTURES / "manifest.json"
    if not path.is_file():
        missing_input(f"the Detectron2 fixtures are not at {FIXTURES} (bench/detectron2_fixtures.py makes them)")
    return json.loads(path.read_text())


def narrowed(preset: str, overrides: list, manifest: dict) -> ModelConfig:
    """Our preset with the fixture's narrowing (Detectron2's config overrides, as our config fields)."""
    o = dict(zip(overrides[::2], overrides[1::2]))
    cfg = get_preset(preset)
    backbone = replace(cfg.backbone, blocks=BLOCKS[cfg.backbone.arch], stem_channels=o["MODEL.RESNETS.STEM_OUT_CHANNELS"],
                       res2_out_channels=o["MODEL.RESNETS.RES2_OUT_CHANNELS"], groups=o.get("MODEL.RESNETS.NUM_GROUPS", 1),
                       width_per_group=o["MODEL.RESNETS.WIDTH_PER_GROUP"])
    cfg = replace(cfg, backbone=backbone, fpn=replace(cfg.fpn, out_channels=o["MODEL.FPN.OUT_CHANNELS"]),
                  box=replace(cfg.box, fc_dim=o["MODEL.ROI_BOX_HEAD.FC_DIM"]),
                  input=replace(cfg.input, min_size=manifest["min_size_test"], max_size=manifest["max_size_test"]))
    if cfg.mask is not None:
        cfg = replace(cfg, mask=replace(cfg.mask, conv_dim=o["MODEL.ROI_MASK_HEAD.CONV_DIM"]))
    if cfg.keypoint is not None:
        dims = o["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS"]
        cfg = replace(cfg, keypoint=replace(cfg.keypoint, num_convs=len(dims), conv_dim=dims[0]))
    return cfg


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    _manifest()
    with np.load(FIXTURES / "images.npz") as f:
        return [torch.from_numpy(f[f"image{i}"]).permute(2, 0, 1).contiguous() for i in range(len(f.files))]


def _golden(case: str, count: int) -> list[dict]:
    with np.load(FIXTURES / f"{case}.npz") as f:
        arrays = {k: f[k] for k in f.files}
    out = []
    for i in range(count):
        ref = {k.split("_", 1)[1]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(f"image{i}_")}
        if "masks" in ref:
            shape = tuple(ref.pop("masks_shape").tolist())
            ref["masks"] = torch.from_numpy(np.unpackbits(ref["masks"].numpy())[: int(np.prod(shape))].reshape(shape).astype(bool))
        out.append(ref)
    return out


def _model(case: str) -> RCNN:
    manifest = _manifest()
    model = RCNN(narrowed(PRESETS[case], manifest["cases"][case]["overrides"], manifest)).eval()
    load_weights(model, FIXTURES / f"{case}.pkl")  # the restricted .pkl reader, Detectron2's names renamed
    return model


def _assert_exact(det, ref: dict) -> dict:
    """Detectron2's detections within the exact tolerances; the largest differences found."""
    assert len(det) == len(ref["boxes"]) > 10
    assert torch.equal(det.labels, ref["classes"] + 1)  # ours count the background as 0
    torch.testing.assert_close(det.boxes, ref["boxes"], atol=BOX_TOL, rtol=0)
    torch.testing.assert_close(det.scores, ref["scores"], atol=SCORE_TOL, rtol=0)
    diffs = {"box_px": (det.boxes - ref["boxes"]).abs().max().item(), "score": (det.scores - ref["scores"]).abs().max().item()}
    if "masks" in ref:
        masks = det.masks()
        assert masks.shape == ref["masks"].shape
        differ = masks != ref["masks"]
        probs = paste_mask_probs(det.mask_probs, det.boxes, det.image_size, rule=det.mask_paste)[:, 0]
        diffs["mask_px"] = int(differ.sum())
        assert ((probs[differ] - 0.5).abs() < MASK_PROB_TOL).all(), probs[differ]
    if "keypoints" in ref:
        torch.testing.assert_close(det.keypoints[..., :2], ref["keypoints"][..., :2], atol=BOX_TOL, rtol=0)
        torch.testing.assert_close(det.keypoints[..., 2], ref["keypoints"][..., 2], atol=KEYPOINT_SCORE_TOL, rtol=0)
        diffs["keypoint_px"] = (det.keypoints[..., :2] - ref["keypoints"][..., :2]).abs().max().item()
    return diffs


@pytest.mark.parametrize("case", list(PRESETS))
def test_exact_mode_gives_detectron2s_detections(case, images):
    model = _model(case)
    refs = _golden(case, len(images))
    for image, ref in zip(images, refs):
        _assert_exact(model.predict([image])[0], ref)


@pytest.mark.parametrize("case", list(PRESETS))
def test_fast_mode_is_within_the_fast_tolerance_of_detectron2(case, images):
    fast = _model(case).optimize_for_inference()
    refs = _golden(case, len(images))
    golden = [_reference_detections(ref) for ref in refs]
    assert_same_detections(golden, [fast.predict([image])[0] for image in images])


def _reference_detections(ref: dict):
    from detector.structures import Detections

    return Detections(boxes=ref["boxes"], scores=ref["scores"], labels=ref["classes"] + 1)


def test_the_background_row_matters():
    """Loaded without moving Detectron2's background row to the front, the labels are off by one and the
    scores wrong: the renaming is what makes the labels Detectron2's."""
    from detector.weights.detectron2_keys import convert_detectron2_state_dict
    from detector.weights.detectron2_pickle import read_detectron2_pickle
    from detector.weights.loading import load_state_dict_strict

    case = "faster_rcnn_R_50_FPN_3x"
    model = _model(case)
    state = convert_detectron2_state_dict(read_detectron2_pickle(FIXTURES / f"{case}.pkl"))
    w = state["roi_heads.box_head.cls_score.weight"]
    state["roi_heads.box_head.cls_score.weight"] = torch.cat([w[1:], w[:1]])  # background last again
    load_state_dict_strict(model, state)
    with np.load(FIXTURES / "images.npz") as f:
        image = torch.from_numpy(f["image0"]).permute(2, 0, 1).contiguous()
    det, ref = model.predict([image])[0], _golden(case, 1)[0]
    assert len(det) != len(ref["boxes"]) or not torch.equal(det.labels, ref["classes"] + 1)
