"""Detectron2's checkpoints on our engine give Detectron2's detections.

The golden fixtures (tests/fixtures/detectron2/, made by bench/detectron2_fixtures.py with Detectron2
itself; the README's Detectron2 section says how) hold, per zoo configuration, narrow seeded random
weights in Detectron2's model_final .pkl format and what Detectron2's DefaultPredictor detected with
them on three generated images. Each is loaded into our d2_* preset, narrowed as the fixture's manifest
says, and compared with the torchvision parity tests' tolerances: ``--speed exact`` within
tests/detector/modeling/test_parity.py's, ``--speed fast`` within test_fast_inference.py's.
"""

from __future__ import annotations

import pytest
import torch

from bench.detectron2_parity import FIXTURES, PRESETS, fixture_model, golden
from bench.detectron2_parity import images as fixture_images
from detector.mask_paste import paste_mask_probs
from detector.structures import Detections
from detector.weights import load_weights
from tests.detector.modeling.test_fast_inference import assert_same_detections
from tests.inputs import missing_input

BOX_TOL = 1e-3  # px, as test_parity.py
SCORE_TOL = 1e-5
KEYPOINT_SCORE_TOL = 1e-4
# Boxes within BOX_TOL move the pasted masks' sampling points a little, so a pixel whose probability is
# this close to the 0.5 threshold may fall on the other side; no other pixel may differ.
MASK_PROB_TOL = 1e-3


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    if not (FIXTURES / "manifest.json").is_file():
        missing_input(f"the Detectron2 fixtures are not at {FIXTURES} (bench/detectron2_fixtures.py makes them)")
    return fixture_images()


def _assert_exact(det, ref: dict) -> None:
    """Detectron2's detections, in its order, within the exact tolerances."""
    assert len(det) == len(ref["boxes"]) > 10
    assert torch.equal(det.labels, ref["classes"] + 1)  # ours count the background as 0
    torch.testing.assert_close(det.boxes, ref["boxes"], atol=BOX_TOL, rtol=0)
    torch.testing.assert_close(det.scores, ref["scores"], atol=SCORE_TOL, rtol=0)
    if "masks" in ref:
        masks = det.masks()
        assert masks.shape == ref["masks"].shape
        differ = masks != ref["masks"]
        probs = paste_mask_probs(det.mask_probs, det.boxes, det.image_size, rule=det.mask_paste)[:, 0]
        assert ((probs[differ] - 0.5).abs() < MASK_PROB_TOL).all(), probs[differ]
    if "keypoints" in ref:
        torch.testing.assert_close(det.keypoints[..., :2], ref["keypoints"][..., :2], atol=BOX_TOL, rtol=0)
        torch.testing.assert_close(det.keypoints[..., 2], ref["keypoints"][..., 2], atol=KEYPOINT_SCORE_TOL, rtol=0)


@pytest.mark.parametrize("case", list(PRESETS))
def test_exact_mode_gives_detectron2s_detections(case, images):
    model = fixture_model(case)
    for image, ref in zip(images, golden(case, len(images))):
        _assert_exact(model.predict([image])[0], ref)


@pytest.mark.parametrize("case", list(PRESETS))
def test_fast_mode_is_within_the_fast_tolerance_of_detectron2(case, images):
    fast = fixture_model(case).optimize_for_inference()
    refs = [Detections(boxes=r["boxes"], scores=r["scores"], labels=r["classes"] + 1) for r in golden(case, len(images))]
    assert_same_detections(refs, [fast.predict([image])[0] for image in images])


def test_the_background_row_matters(images):
    """Loaded without moving Detectron2's background row to the front, the labels are off: the renaming
    is what makes the labels Detectron2's."""
    from detector.weights.detectron2_keys import convert_detectron2_state_dict
    from detector.weights.detectron2_pickle import read_detectron2_pickle
    from detector.weights.loading import load_state_dict_strict

    case = "faster_rcnn_R_50_FPN_3x"
    model = fixture_model(case)
    state = convert_detectron2_state_dict(read_detectron2_pickle(FIXTURES / f"{case}.pkl"))
    w = state["roi_heads.box_head.cls_score.weight"]
    state["roi_heads.box_head.cls_score.weight"] = torch.cat([w[1:], w[:1]])  # background last again
    load_state_dict_strict(model, state)
    det, ref = model.predict(images[:1])[0], golden(case, 1)[0]
    assert len(det) != len(ref["boxes"]) or not torch.equal(det.labels, ref["classes"] + 1)


def test_a_detectron2_pth_checkpoint_loads_as_its_pkl(tmp_path, images):
    """Detectron2's own training checkpoints (.pth: {"model": state_dict, "iteration": ...}) go through
    the restricted torch reading and the same renaming, and give the same detections."""
    from detector.weights.detectron2_pickle import read_detectron2_pickle

    case = "faster_rcnn_R_50_FPN_3x"
    path = tmp_path / "model_0004999.pth"
    torch.save({"model": read_detectron2_pickle(FIXTURES / f"{case}.pkl"), "iteration": 4999}, path)
    model = fixture_model(case)
    load_weights(model, path)
    _assert_exact(model.predict(images[:1])[0], golden(case, 1)[0])
