"""The synthetic data set: determinism, COCO compatibility, visible masks and honest visibility."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.data.coco import CocoDataset
from detector.data.synthetic import (
    Shape,
    SyntheticPaths,
    ensure_synthetic,
    keypoint_visibility,
    main,
    person_keypoints,
    render_scene,
    write_synthetic,
)

# pycocotools' RLE decoding predates numpy 2's copy keyword; the masks are right all the same.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticPaths:
    return write_synthetic(tmp_path_factory.mktemp("synthetic"), train=2, val=10, size=96, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = _files(write_synthetic(tmp_path / "a", train=3, val=2, size=64, seed=3).root)
    assert set(first) >= {"train/000000.png", "val/000001.png", "annotations/instances_train.json", "manifest.json"}
    assert _files(write_synthetic(tmp_path / "b", train=3, val=2, size=64, seed=3).root) == first
    other = _files(write_synthetic(tmp_path / "c", train=3, val=2, size=64, seed=4).root)
    assert other["annotations/instances_train.json"] != first["annotations/instances_train.json"]
    more = _files(write_synthetic(tmp_path / "d", train=4, val=2, size=64, seed=3).root)
    assert more["train/000002.png"] == first["train/000002.png"]  # each image has its own random stream


def _evaluate(gt: COCO, results: list[dict], iou_type: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_ground_truth_as_results_scores_ap_one(synthetic: SyntheticPaths) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(synthetic.val_annotations))
    anns = gt.dataset["annotations"]
    persons = [a for a in anns if a["category_id"] == 4 and a["num_keypoints"] > 0]
    assert len(persons) >= 2 and {a["category_id"] for a in anns} == {1, 2, 3, 4}
    boxes = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in anns
    ]
    segms = [{**box, "segmentation": a["segmentation"]} for box, a in zip(boxes, anns)]
    kps = [{"image_id": a["image_id"], "category_id": 4, "keypoints": a["keypoints"], "score": 1.0} for a in persons]
    for iou_type, results in (("bbox", boxes), ("segm", segms), ("keypoints", kps)):
        assert _evaluate(gt, copy.deepcopy(results), iou_type) == pytest.approx(1.0), iou_type


def test_loads_as_a_coco_dataset_with_visible_masks(synthetic: SyntheticPaths) -> None:
    ds = CocoDataset(synthetic.val_images, synthetic.val_annotations, with_masks=True)
    assert ds.class_names == ["__background__", "circle", "square", "triangle", "person"]
    assert ds.stats.crowd_skipped == ds.stats.degenerate_dropped == 0
    orientations = set()
    for index in range(len(ds)):
        image, targets, info = ds[index]
        orientations.add(info["width"] >= info["height"])
        assert targets.masks.shape == (len(targets), *image.shape[1:])
        assert (targets.masks.sum(0) <= 1).all()  # visible pixels: no pixel belongs to two objects
        for k, ann_id in enumerate(ds.annotation_ids(index)):
            ann = ds.coco.anns[ann_id]
            x, y, w, h = ann["bbox"]
            assert targets.boxes[k].tolist() == [x, y, x + w, y + h]
            assert np.array_equal(targets.masks[k].numpy(), mask_utils.decode(ann["segmentation"]))
            assert int(targets.masks[k].sum()) == ann["area"]
        shapes = targets.labels != 4
        assert targets.keypoints.shape == (len(targets), 17, 3) and (targets.keypoints[shapes] == 0).all()
    assert orientations == {True, False}


def test_keypoint_visibility_is_honest_over_the_data_set(synthetic: SyntheticPaths) -> None:
    anns = json.loads(synthetic.val_annotations.read_text())["annotations"]
    for ann in (a for a in anns if a["category_id"] == 4):
        visible = mask_utils.decode(ann["segmentation"])
        keypoints = np.array(ann["keypoints"]).reshape(17, 3)
        assert ann["num_keypoints"] == int((keypoints[:, 2] > 0).sum())
        for x, y, v in keypoints:
            if v == 0:
                assert x == y == 0
            else:  # a visible keypoint is on the person's visible pixels, an occluded one is not
                assert visible[y, x] == (v == 2)


def test_visibility_of_keypoints_outside_and_occluded() -> None:
    person = Shape("person", center=(56.0, 40.0), size=40.0, colour=(200, 50, 50), pose=(1.6, 0.3, 0.1, 0.1))
    occluder = Shape("square", center=(50.0, 46.0), size=8.0, colour=(50, 200, 50))
    _, anns = render_scene(np.zeros((64, 64, 3), dtype=np.uint8), [person, occluder])
    assert [a["category_id"] for a in anns] == [4, 2]
    keypoints = np.array(anns[0]["keypoints"]).reshape(17, 3)
    expected_counts = {0: 0, 1: 0, 2: 0}
    for (x, y), (kx, ky, v) in zip(person_keypoints(person.center, person.size, person.pose), keypoints):
        if not (0 <= x < 64 and 0 <= y < 64):
            expected = 0  # the raised left arm reaches past the right edge
            assert (kx, ky) == (0, 0)
        elif abs(x - 50) < 7 and abs(y - 46) < 7:
            expected = 1  # under the square drawn after the person
        elif abs(x - 50) > 9 or abs(y - 46) > 9:
            expected = 2
        else:
            continue  # on the square's edge
        assert v == expected, (x, y, v)
        assert v == 0 or (kx, ky) == (x, y)
        expected_counts[expected] += 1
    assert all(n > 0 for n in expected_counts.values()), expected_counts
    assert anns[0]["num_keypoints"] == int((keypoints[:, 2] > 0).sum())


def test_keypoint_visibility_function() -> None:
    covered = np.zeros((4, 5), dtype=bool)
    covered[1, 2] = True
    points = np.array([[2, 1], [0, 0], [5, 1], [-1, 2], [4, 3], [1, 4]])
    expected = [[2, 1, 1], [0, 0, 2], [0, 0, 0], [0, 0, 0], [4, 3, 2], [0, 0, 0]]  # covered, free, outside x3, free
    assert keypoint_visibility(points, covered).tolist() == expected


def test_later_objects_occlude_and_hidden_objects_are_dropped() -> None:
    background = np.zeros((40, 40, 3), dtype=np.uint8)
    first = Shape("square", center=(15.0, 15.0), size=6.0, colour=(255, 0, 0))
    second = Shape("square", center=(20.0, 20.0), size=6.0, colour=(0, 0, 255))
    hidden = Shape("circle", center=(30.0, 30.0), size=3.0)
    cover = Shape("square", center=(30.0, 30.0), size=8.0, colour=(0, 255, 0))
    image, anns = render_scene(background, [first, second, hidden, cover])
    assert [a["category_id"] for a in anns] == [2, 2, 2]  # the circle under the last square is gone
    masks = [mask_utils.decode(a["segmentation"]).astype(bool) for a in anns]
    assert not (masks[0] & masks[1]).any()
    assert masks[0].sum() < masks[1].sum()  # the first square lost its overlap with the second
    assert (image[masks[0]] == (255, 0, 0)).all() and (image[masks[1]] == (0, 0, 255)).all()
    with pytest.raises(ValueError, match="hexagon"):
        render_scene(background, [Shape("hexagon", center=(5.0, 5.0), size=2.0)])


def test_ensure_synthetic_reuses_matching_files(tmp_path: Path) -> None:
    paths = ensure_synthetic(tmp_path, train=2, val=1, size=48, seed=0)
    stamp = paths.train_annotations.stat().st_mtime_ns
    assert json.loads((tmp_path / "manifest.json").read_text())["train"] == 2
    assert ensure_synthetic(tmp_path, train=2, val=1, size=48, seed=0) == paths
    assert paths.train_annotations.stat().st_mtime_ns == stamp
    ensure_synthetic(tmp_path, train=3, val=1, size=48, seed=0)
    assert len(json.loads(paths.train_annotations.read_text())["images"]) == 3
    with pytest.raises(ValueError, match="size"):
        ensure_synthetic(tmp_path, train=1, val=1, size=8, seed=0)


def test_cli_writes_the_data_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--out", str(tmp_path), "--train", "2", "--val", "1", "--size", "48", "--seed", "9"]) == 0
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000000.png", "000001.png"]
    assert (tmp_path / "annotations" / "instances_val.json").is_file()
    assert str(tmp_path / "train") in capsys.readouterr().out


@pytest.mark.slow
def test_two_hundred_images_take_seconds(tmp_path: Path) -> None:
    """Run with: pytest -m slow tests/detector/data/test_synthetic.py

    Timed in this process's CPU seconds (the writer runs in one thread), which other processes' load on
    the machine does not inflate as it does wall time; 15 s is generous for 200 images."""
    start = time.process_time()
    paths = write_synthetic(tmp_path, train=200, val=0, size=256, seed=0)
    assert time.process_time() - start < 15.0
    assert len(json.loads(paths.train_annotations.read_text())["images"]) == 200
