"""CocoDataset on the real COCO sample (skipped without it) and on small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data.coco import CocoDataset, DatasetStats
from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES
from detector.data.transforms import hflip
from tests.tiny_coco import tiny_coco_root



@pytest.fixture(scope="module")
def instances() -> CocoDataset:
    root = tiny_coco_root()
    return CocoDataset(root / "val2017", root / "annotations" / "instances_val2017.json", with_masks=True)


@pytest.fixture(scope="module")
def persons() -> CocoDataset:
    root = tiny_coco_root()
    return CocoDataset(root / "val2017", root / "annotations" / "person_keypoints_val2017.json")


def _usable(ann: dict, image: dict) -> bool:
    x, y, w, h = ann["bbox"]
    return not ann["iscrowd"] and min(x + w, image["width"]) > max(x, 0) and min(y + h, image["height"]) > max(y, 0)


def test_tiny_coco_instances_load(instances: CocoDataset) -> None:
    data = instances.coco.dataset
    images = {im["id"]: im for im in data["images"]}
    with_objects = {a["image_id"] for a in data["annotations"] if _usable(a, images[a["image_id"]])}
    assert len(instances) == len(with_objects)
    assert instances.stats.images_without_annotations == len(images) - len(with_objects)
    assert instances.stats.crowd_skipped == sum(a["iscrowd"] for a in data["annotations"]) > 0
    assert instances.class_names[0] == "__background__" and instances.class_names[1] == "person"
    assert len(instances.class_names) == 81
    assert instances.label_to_category_id[80] == 90  # COCO's ids have gaps, labels do not
    for cid, label in instances.category_id_to_label.items():
        assert instances.label_to_category_id[label] == cid
        assert instances.class_names[label] == instances.coco.cats[cid]["name"]
    assert not instances.has_keypoints and instances.keypoint_class_names == ()

    for index in range(len(instances)):
        image, targets, info = instances[index]
        assert image.dtype == torch.uint8 and image.shape == (3, info["height"], info["width"])
        assert (info["height"], info["width"]) == instances.image_size(index)
        assert targets.boxes.dtype == torch.float32 and targets.labels.dtype == torch.int64
        assert len(targets) > 0 and targets.keypoints is None
        assert targets.masks.shape == (len(targets), info["height"], info["width"])
        boxes = targets.boxes
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= info["width"]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= info["height"]).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((targets.labels >= 1) & (targets.labels <= 80)).all()


def test_tiny_coco_crowd_left_out(instances: CocoDataset) -> None:
    coco = instances.coco
    crowd = {a["id"]: a["image_id"] for a in coco.dataset["annotations"] if a["iscrowd"]}
    checked = 0
    for index in range(len(instances)):
        ids = instances.annotation_ids(index)
        image_id = coco.anns[ids[0]]["image_id"]
        if image_id not in crowd.values():
            continue
        assert not set(ids) & crowd.keys()
        image = coco.imgs[image_id]
        assert len(ids) == sum(_usable(a, image) for a in coco.imgToAnns[image_id])
        checked += 1
    assert checked > 0


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools under numpy 2
def test_tiny_coco_masks_match_ann_to_mask(instances: CocoDataset) -> None:
    for index in (0, 7):
        _, targets, _ = instances[index]
        expected = np.stack([instances.coco.annToMask(instances.coco.anns[a]) for a in instances.annotation_ids(index)])
        assert targets.masks.dtype == torch.uint8
        assert np.array_equal(targets.masks.numpy(), expected)


def test_tiny_coco_keypoints(persons: CocoDataset) -> None:
    assert persons.class_names == ["__background__", "person"]
    assert persons.has_keypoints and persons.num_keypoints == len(COCO_KEYPOINT_NAMES)
    assert persons.keypoint_class_names == ("person",)
    assert persons.stats.crowd_skipped > 0
    for index in range(3):
        _, targets, _ = persons[index]
        assert targets.keypoints.dtype == torch.float32
        assert targets.keypoints.shape == (len(targets), 17, 3)
        for row, ann_id in zip(targets.keypoints, persons.annotation_ids(index)):
            assert row.flatten().tolist() == persons.coco.anns[ann_id]["keypoints"]
        assert set(targets.keypoints[..., 2].unique().tolist()) <= {0.0, 1.0, 2.0}


# ---- small files written by the tests --------------------------------------------------------


def _write_coco(root: Path, images: list[tuple[str, int, int]], annotations: list[dict]) -> Path:
    """A COCO file over images (file_name, width, height) with two categories, ids 3 and 7."""
    entries = [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(images)]
    anns = [{"id": i + 1, "iscrowd": 0, "category_id": 3, "area": 1.0, **a} for i, a in enumerate(annotations)]
    for ann in anns:
        x, y, w, h = ann["bbox"]
        ann.setdefault("segmentation", [[x, y, x + w, y, x + w, y + h, x, y + h]])
    categories = [{"id": 7, "name": "kite"}, {"id": 3, "name": "car"}]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns, "categories": categories}))
    return path


def _write_image(path: Path, width: int, height: int, mode: str = "RGB") -> None:
    Image.new(mode, (width, height), 128).save(path)


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, list, list]:
    """Three images: 'a.png' 40x30 with varied boxes, 'b.png' greyscale with one box, 'empty.png' with none."""
    _write_image(tmp_path / "a.png", 40, 30)
    _write_image(tmp_path / "b.png", 20, 20, mode="L")
    _write_image(tmp_path / "empty.png", 16, 16)
    images = [("a.png", 40, 30), ("b.png", 20, 20), ("empty.png", 16, 16)]
    annotations = [
        {"image_id": 1, "bbox": [5, 5, 10, 10]},  # inside
        {"image_id": 1, "bbox": [30, -4, 20, 10], "category_id": 7},  # clipped to [30, 0, 40, 6]
        {"image_id": 1, "bbox": [45, 5, 10, 10]},  # right of the image: empty once clipped
        {"image_id": 1, "bbox": [5, 5, 0, 10]},  # zero width
        {"image_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1},
        {"image_id": 2, "bbox": [2, 2, 4, 4]},
    ]
    return tmp_path, images, annotations


def test_boxes_clipped_degenerate_dropped_and_counted(small) -> None:
    root, images, annotations = small
    ds = CocoDataset(root, _write_coco(root, images, annotations), with_masks=True)
    assert ds.class_names == ["__background__", "car", "kite"]  # sorted by category id (3, 7)
    assert ds.stats == DatasetStats(crowd_skipped=1, degenerate_dropped=2, images_without_annotations=1)
    assert len(ds) == 2
    image, targets, info = ds[0]
    assert info == {"image_id": 1, "file_name": "a.png", "height": 30, "width": 40}
    assert targets.boxes.tolist() == [[5, 5, 15, 15], [30, 0, 40, 6]]
    assert targets.labels.tolist() == [1, 2]
    assert ds.annotation_ids(0) == (1, 2)
    assert targets.masks.shape == (2, 30, 40)
    image, targets, _ = ds[1]  # the greyscale image
    assert image.shape == (3, 20, 20) and (image == 128).all()


def test_empty_images_kept_on_request(small) -> None:
    root, images, annotations = small
    ds = CocoDataset(root, _write_coco(root, images, annotations), with_masks=True, skip_empty=False)
    assert len(ds) == 3 and ds.stats.images_without_annotations == 1
    _, targets, info = ds[2]
    assert info["file_name"] == "empty.png"
    assert targets.boxes.shape == (0, 4) and targets.labels.shape == (0,)
    assert targets.masks.shape == (0, 16, 16)


def test_missing_image_raises_naming_it(small) -> None:
    root, images, annotations = small
    file = _write_coco(root, [*images, ("gone.png", 10, 10)], [*annotations, {"image_id": 4, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match="gone.png"):
        CocoDataset(root, file)


def test_missing_image_skipped_and_counted(small) -> None:
    root, images, annotations = small
    file = _write_coco(root, [*images, ("gone.png", 10, 10)], [*annotations, {"image_id": 4, "bbox": [1, 1, 5, 5]}])
    ds = CocoDataset(root, file, skip_bad_images=True)
    assert len(ds) == 2 and ds.stats.images_missing_or_corrupt == 1
    assert [ds[i][2]["file_name"] for i in range(len(ds))] == ["a.png", "b.png"]


def test_corrupt_image_raises_naming_it(small) -> None:
    root, images, annotations = small
    (root / "a.png").write_bytes(b"not a png at all")
    ds = CocoDataset(root, _write_coco(root, images, annotations))
    with pytest.raises(ValueError, match="a.png"):
        ds[0]


def test_corrupt_image_skipped_gives_next_and_counts_once(small) -> None:
    root, images, annotations = small
    (root / "a.png").write_bytes(b"not a png at all")
    ds = CocoDataset(root, _write_coco(root, images, annotations), skip_bad_images=True)
    assert ds.stats.images_missing_or_corrupt == 0  # only existence is checked up front
    for _ in range(2):
        assert ds[0][2]["file_name"] == "b.png"
    assert ds.stats.images_missing_or_corrupt == 1


def test_size_mismatch_with_annotation_file_raises(small) -> None:
    root, images, annotations = small
    images[1] = ("b.png", 21, 20)
    ds = CocoDataset(root, _write_coco(root, images, annotations))
    with pytest.raises(ValueError, match="b.png"):
        ds[1]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    raw = np.zeros((20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high: left half red, right half blue
    raw[:, :20, 0] = 255
    raw[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(raw).save(tmp_path / "r.jpg", exif=exif, quality=95)
    file = _write_coco(tmp_path, [("r.jpg", 20, 40)], [{"image_id": 1, "bbox": [1, 1, 5, 5]}])
    image, _, _ = CocoDataset(tmp_path, file)[0]
    assert image.shape == (3, 40, 20)
    assert image[0, :18].float().mean() > 200 and image[2, 22:].float().mean() > 200  # red on top


def test_bad_annotation_files_raise_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothere.json"):
        CocoDataset(tmp_path, tmp_path / "nothere.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="list.json"):
        CocoDataset(tmp_path, tmp_path / "list.json")
    _write_image(tmp_path / "a.png", 10, 10)
    file = _write_coco(tmp_path, [("a.png", 10, 10)], [{"image_id": 1, "bbox": [1, 1, 5, 5], "category_id": 99}])
    with pytest.raises(ValueError, match="99"):
        CocoDataset(tmp_path, file)


def test_transforms_applied_to_image_and_targets(small) -> None:
    root, images, annotations = small
    ds = CocoDataset(root, _write_coco(root, images, annotations), transforms=hflip)
    image, targets, info = ds[0]
    assert image.shape == (3, 30, 40) and info["width"] == 40
    assert targets.boxes.tolist() == [[25, 5, 35, 15], [0, 0, 10, 6]]
