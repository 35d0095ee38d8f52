"""Same weights, same images: our models give torchvision's detections.

torchvision's models are composed as its builders do when loading COCO checkpoints (v1: FrozenBatchNorm;
v2: its ``*_resnet50_fpn_v2`` builders, BatchNorm2d), with random weights and trained-looking BN
statistics under a fixed seed; see bench/reference.py.
"""

from dataclasses import replace

import pytest
import torch
from torch import nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import FrozenBatchNorm2d, clip_boxes_to_image

from detector.modeling.presets import get_preset
from detector.modeling.rcnn import RCNN
from detector.modeling.transform import InputConfig
from detector.weights import load_weights
from detector.weights.loading import load_state_dict_strict
from detector.weights.torchvision_keys import convert_torchvision_state_dict
from bench.parity import compare
from bench.reference import torchvision_reference
from tests.tiny_coco import tiny_coco_root

BOX_TOL = 1e-3  # pixels; reached: 0.0 (bit-identical) on this CPU


def _images():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 300, 400, generator=g), torch.rand(3, 360, 280, generator=g)]


def _ours(preset: str) -> RCNN:
    return RCNN(replace(get_preset(preset), input=InputConfig(min_size=320, max_size=512))).eval()


def _assert_same(ref: dict, det, image_size) -> None:
    assert len(det) == len(ref["boxes"]) > 10
    torch.testing.assert_close(det.boxes, ref["boxes"], atol=BOX_TOL, rtol=0)
    torch.testing.assert_close(det.scores, ref["scores"], atol=1e-5, rtol=0)
    assert torch.equal(det.labels, ref["labels"])
    if "masks" in ref:
        torch.testing.assert_close(det.masks(), ref["masks"][:, 0] > 0.5, atol=0, rtol=0)
    if "keypoints" in ref:
        torch.testing.assert_close(det.keypoints[..., :2], ref["keypoints"][..., :2], atol=BOX_TOL, rtol=0)
        torch.testing.assert_close(det.keypoints[..., 2], ref["keypoints_scores"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset", ["fasterrcnn_r50_fpn", "maskrcnn_r50_fpn", "keypointrcnn_r50_fpn"])
def test_same_detections_as_torchvision(preset, tmp_path):
    tv = torchvision_reference(preset, eps=0.0)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)  # as torchvision's checkpoints are saved
    ours = _ours(preset)
    load_weights(ours, path)  # a torchvision file: renamed, FrozenBN eps = 0 as torchvision sets it
    images = _images()
    with torch.no_grad():
        refs = tv(images)
    # torchvision pads both images into one batch; pad_together does the same.
    for ref, det, img in zip(refs, ours.predict(images, pad_together=True), images):
        _assert_same(ref, det, img.shape[-2:])


def test_reference_bn_statistics_look_trained():
    """An identity BN (a fresh model's) would hide a wrong eps or a folding bug: every BN of the references
    has random statistics and affine weights."""
    for preset in ("fasterrcnn_r50_fpn", "maskrcnn_r50_fpn_v2"):
        norms = [m for m in torchvision_reference(preset).modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
        assert len(norms) > 50
        for m in norms:
            assert not torch.equal(m.running_var, torch.ones_like(m.running_var))
            assert m.running_mean.abs().min() > 0 and m.bias.abs().min() > 0
            assert m.weight.std() > 0


V2_PRESETS = ["fasterrcnn_r50_fpn_v2", "maskrcnn_r50_fpn_v2"]
# 300 proposals, not 1000: the v2 box head's four convs over every RoI are most of the time of a run.
V2_PROPOSALS = 300


def v2_pair(preset: str, tmp_path) -> tuple:
    """(torchvision's v2 model, ours loaded from its state_dict saved as torchvision saves checkpoints)."""
    tv = torchvision_reference(preset, rpn_post_nms_top_n_test=V2_PROPOSALS)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    cfg = get_preset(preset)
    ours = RCNN(replace(cfg, input=InputConfig(min_size=320, max_size=512),
                        rpn=replace(cfg.rpn, post_nms_top_n_test=V2_PROPOSALS))).eval()
    load_weights(ours, path)
    return tv, ours


@pytest.mark.parametrize("preset", V2_PRESETS)
def test_v2_same_detections_as_torchvision_bit_for_bit(preset, tmp_path):
    tv, ours = v2_pair(preset, tmp_path)
    assert isinstance(ours.fpn.lateral_convs[0][1], nn.BatchNorm2d) and len(ours.rpn.head.extra_convs) == 1
    image = _images()[:1]
    with torch.no_grad():
        ref = tv(image)[0]
    det = ours.predict(image)[0]
    assert len(det) > 10 and ("masks" in ref) == (det.mask_probs is not None)
    assert compare(ref, det)["identical"]  # boxes, scores, labels (and pasted masks) equal


def test_v2_and_v1_files_do_not_load_into_each_others_presets(tmp_path):
    v2 = torchvision_reference("fasterrcnn_r50_fpn_v2").state_dict()
    with pytest.raises(ValueError, match="missing keys.*fpn.lateral_convs.0.weight"):
        load_state_dict_strict(_ours("fasterrcnn_r50_fpn"), convert_torchvision_state_dict(v2))
    v1 = torchvision_reference("fasterrcnn_r50_fpn").state_dict()
    with pytest.raises(ValueError, match="unexpected keys: fpn.lateral_convs.0.bias"):
        load_state_dict_strict(_ours("fasterrcnn_r50_fpn_v2"), convert_torchvision_state_dict(v1))


def test_frozen_bn_eps_matters_and_is_set_for_torchvision_files(tmp_path):
    tv = torchvision_reference("fasterrcnn_r50_fpn", eps=0.0)
    ours = _ours("fasterrcnn_r50_fpn")
    load_state_dict_strict(ours, convert_torchvision_state_dict(tv.state_dict()))  # keeps eps = 1e-5
    image = _images()[:1]
    with torch.no_grad():
        ref = tv(image)[0]
    wrong = ours.predict(image)[0]
    assert len(wrong) != len(ref["boxes"]) or not torch.allclose(wrong.boxes, ref["boxes"], atol=1e-2)
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    load_weights(ours, path)
    _assert_same(ref, ours.predict(image)[0], image[0].shape[-2:])


def _old_spelling(state: dict) -> dict:
    """Keys as torchvision saved them before 2020."""
    old = {}
    for k, v in state.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                k = k.replace(f"backbone.fpn.{block}.{i}.0.", f"backbone.fpn.{block}.{i}.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        old[k] = v
    return old


def test_pre_2020_key_names_load(tmp_path):
    tv = torchvision_reference("maskrcnn_r50_fpn", eps=0.0)
    old = _old_spelling(tv.state_dict())
    assert "rpn.head.conv.weight" in old and "backbone.fpn.inner_blocks.0.weight" in old
    assert "roi_heads.mask_head.mask_fcn1.weight" in old
    path = tmp_path / "old.pth"
    torch.save(old, path)
    ours = _ours("maskrcnn_r50_fpn")
    load_weights(ours, path)
    image = _images()[:1]
    with torch.no_grad():
        ref = tv(image)[0]
    _assert_same(ref, ours.predict(image)[0], image[0].shape[-2:])


def test_pasted_masks_match_torchvision_paste():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(20, 28, 28, generator=g)
    xy = torch.rand(20, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(20, 2, generator=g) * 60], dim=1)
    boxes = clip_boxes_to_image(boxes, (120, 160))  # as detections are
    ref = paste_masks_in_image(probs[:, None], boxes, (120, 160), padding=1)[:, 0] > 0.5
    from detector.mask_paste import paste_masks

    assert torch.equal(paste_masks(probs, boxes, (120, 160)), ref)


# Real COCO images (tiny_coco) whose size a float32 resize scale put 1 px off torchvision's, so that every
# detection moved: (427 x 640 and 640 x 427 are COCO's most common sizes; 334 x 500 is one where
# torchvision's own double-precision scale gives 799, not 800).
REAL_IMAGES = {
    "fasterrcnn_r50_fpn": ["val2017/000000006818.jpg"],  # 640 x 427 -> 1199 x 800
    "maskrcnn_r50_fpn": ["val2017/000000037777.jpg"],  # 230 x 352 -> 800 x 1224
    "keypointrcnn_r50_fpn": ["train2017/000000144941.jpg"],  # 334 x 500 -> 799 x 1197
}
MORE_REAL_IMAGES = ["val2017/000000181666.jpg", "val2017/000000239274.jpg", "val2017/000000403817.jpg",
                    "train2017/000000012448.jpg", "train2017/000000412151.jpg", "train2017/000000540186.jpg"]


def _real_coco_parity(preset: str, files: list[str]) -> None:
    from bench.parity import run_model  # the same comparison as bench/parity.py over all 100 images

    root = tiny_coco_root()
    report = run_model(preset, [root / f for f in files], seed=0)
    assert [r["detections"] > 10 for r in report["rows"]] == [True] * len(files)  # something to compare
    assert report["differing"] == [], report["rows"]


@pytest.mark.parametrize("preset", list(REAL_IMAGES))
def test_same_detections_as_torchvision_on_real_coco_sizes(preset):
    """The user's path: a torchvision checkpoint (random weights, trained-looking FrozenBN statistics)
    loaded by ``Predictor.from_preset(speed="exact")``, an image file at COCO's 800/1333 sizes: boxes,
    scores, labels, pasted masks and keypoints equal torchvision's bit for bit."""
    _real_coco_parity(preset, REAL_IMAGES[preset])


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(REAL_IMAGES))
def test_same_detections_as_torchvision_on_more_real_coco_sizes(preset):
    _real_coco_parity(preset, MORE_REAL_IMAGES)


@pytest.mark.slow
@pytest.mark.parametrize("preset", V2_PRESETS)
def test_v2_same_detections_as_torchvision_on_real_coco_sizes(preset):
    """The v2 presets on the user's path (``Predictor.from_preset``, a torchvision v2 checkpoint, 800 px)."""
    _real_coco_parity(preset, REAL_IMAGES["maskrcnn_r50_fpn"] + REAL_IMAGES["keypointrcnn_r50_fpn"])
