"""api/render.py: boxes, labels, masks (RLE and polygons) and keypoints land on the image."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from api.render import render_png

H, W = 60, 80


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode()}


def _decode(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB"
    return np.asarray(img).astype(int)


def test_nothing_to_draw_gives_the_image_back():
    image = np.full((H, W, 3), 40, np.uint8)
    out = _decode(render_png(image, {"width": W, "height": H, "detections": []}))
    assert np.array_equal(out, image)


def test_box_label_mask_and_keypoints_are_drawn():
    image = np.zeros((H, W, 3), np.uint8)
    mask = np.zeros((H, W), bool)
    mask[30:50, 50:70] = True
    keypoints = [[5.0, 55.0, 1.0]] + [[0.0, 0.0, -1.0]] * 16  # one confident keypoint, 16 below threshold
    detections = [
        {"bbox": [10, 20, 40, 50], "score": 0.9, "label": 1, "category": "circle"},
        {"bbox": [50, 30, 70, 50], "score": 0.8, "label": 2, "category": "square", "mask": _rle(mask)},
        {"bbox": [2, 52, 8, 58], "score": 0.7, "label": 4, "category": "person", "keypoints": keypoints},
    ]
    out = _decode(render_png(image, {"width": W, "height": H, "detections": detections}))
    assert out.shape == (H, W, 3)
    assert out[35, 10].sum() > 0  # left edge of the first box
    assert out[25, 25].sum() == 0  # inside it, untouched
    assert out[45, 60].sum() > 0 and out[45, 60].max() < 255  # the mask, translucent
    assert out[5, 75].sum() == 0  # outside everything
    assert out[55, 5].min() > 200  # the keypoint, white


def test_polygon_masks_are_filled():
    image = np.zeros((H, W, 3), np.uint8)
    polygon = {"size": [H, W], "polygons": [[20.0, 10.0, 40.0, 10.0, 40.0, 30.0, 20.0, 30.0]]}
    det = {"bbox": [20, 10, 40, 30], "score": 0.5, "label": 3, "category": "triangle", "mask": polygon}
    out = _decode(render_png(image, {"width": W, "height": H, "detections": [det]}))
    assert out[25, 30].sum() > 0


def test_person_keypoints_are_joined_by_the_coco_skeleton():
    from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES

    image = np.zeros((H, W, 3), np.uint8)
    keypoints = [[0.0, 0.0, -1.0]] * len(COCO_KEYPOINT_NAMES)  # all below threshold ...
    shoulder, hip = COCO_KEYPOINT_NAMES.index("left_shoulder"), COCO_KEYPOINT_NAMES.index("left_hip")
    keypoints = [list(p) for p in keypoints]
    keypoints[shoulder], keypoints[hip] = [40.0, 10.0, 1.0], [40.0, 50.0, 1.0]  # ... but a left flank
    det = {"bbox": [0, 0, 1, 1], "score": 0.9, "label": 4, "category": "person", "keypoints": keypoints}
    out = _decode(render_png(image, {"width": W, "height": H, "detections": [det]}))
    assert out[30, 40].sum() > 0  # midway: the limb between them
    keypoints[hip][2] = -1.0  # the hip unseen: no limb
    out = _decode(render_png(image, {"width": W, "height": H, "detections": [det]}))
    assert out[30, 40].sum() == 0


def test_masks_given_as_in_box_windows_are_drawn_in_their_box_only():
    image = np.zeros((H, W, 3), np.uint8)
    window = np.zeros((20, 20), bool)
    window[5:15, 5:15] = True  # the mask covers [35:45, 55:65] of the image
    det = {"bbox": [50, 30, 70, 50], "score": 0.8, "label": 2, "category": "square"}
    out = _decode(render_png(image, {"width": W, "height": H, "detections": [det]}, masks=[(window, 30, 50)]))
    assert out[40, 60].sum() > 0 and out[40, 60].max() < 255  # inside the mask, translucent
    assert out[33, 53].sum() == 0  # in the box, outside the mask
    assert out[10, 10].sum() == 0


def test_a_window_draws_what_its_rle_draws():
    image = np.full((H, W, 3), 90, np.uint8)
    mask = np.zeros((H, W), bool)
    mask[10:40, 20:45] = True
    mask[15:20, 30:35] = False  # a hole
    det = {"bbox": [20, 10, 45, 40], "score": 0.8, "label": 1, "category": "circle"}
    from_rle = render_png(image, {"width": W, "height": H, "detections": [{**det, "mask": _rle(mask)}]})
    from_window = render_png(image, {"width": W, "height": H, "detections": [det]}, masks=[(mask[10:40, 20:45], 10, 20)])
    assert np.array_equal(_decode(from_rle), _decode(from_window))
    assert not np.array_equal(_decode(from_rle), image)


def test_a_mask_tinted_band_by_band_equals_one_band(monkeypatch):
    import api.render

    image = np.full((H, W, 3), 90, np.uint8)
    mask = np.zeros((H, W), bool)
    mask[5:55, 10:70] = True
    mask[20:30, 30:40] = False
    det = {"bbox": [10, 5, 70, 55], "score": 0.8, "label": 1, "category": "circle", "mask": _rle(mask)}
    whole = _decode(render_png(image, {"width": W, "height": H, "detections": [det]}))
    monkeypatch.setattr(api.render, "_BAND_PIXELS", 60 * 7 + 3)  # bands of 7 rows of the box
    assert np.array_equal(_decode(render_png(image, {"width": W, "height": H, "detections": [det]})), whole)
    assert not np.array_equal(whole, image)
