"""detector/data/coco_file.py: the one COCO annotation loader, for data sets and evaluation alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.data.coco import CocoDataset
from detector.data.coco_file import coco_from_dict, load_coco_file
from detector.evaluation.ground_truth import load_ground_truth

GOOD = {
    "images": [{"id": 7, "file_name": "a.png", "height": 10, "width": 12}],
    "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}],
    "categories": [{"id": 3, "name": "square"}],
}
BAD = [
    (None, "no such file"),
    ("{not json", "Expecting property name"),
    (b"\xff\xfe\x00garbage", "Expecting value"),  # not UTF-8 (nor UTF-16) text
    ("[]", "JSON object, not a list"),
    ('{"images": [], "categories": []}', "no 'annotations' list"),
    ('{"images": {}, "annotations": [], "categories": []}', "no 'images' list"),
    ('{"images": [{"file_name": "a.png"}], "annotations": [], "categories": []}', "lacks a field"),
]


def _written(folder: Path, content: str | bytes | None) -> Path:
    """folder/ann.json holding ``content``; absent when it is None."""
    path = folder / "ann.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return path


def test_loads_an_annotation_file(tmp_path: Path) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(GOOD))
    coco = load_coco_file(path)
    assert coco.getImgIds() == [7] and coco.getCatIds() == [3] and coco.imgToAnns[7][0]["id"] == 1
    assert coco_from_dict(json.loads(json.dumps(GOOD))).getAnnIds() == [1]


@pytest.mark.parametrize("content, problem", BAD)
def test_a_bad_file_is_a_value_error_starting_with_its_path(tmp_path: Path, content, problem) -> None:
    path = _written(tmp_path, content)
    with pytest.raises(ValueError, match=problem) as info:
        load_coco_file(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("content, problem", BAD)
def test_the_data_set_and_evaluation_read_files_through_it(tmp_path: Path, content, problem) -> None:
    path = _written(tmp_path, content)
    with pytest.raises(ValueError) as from_loader:
        load_coco_file(path)
    with pytest.raises(ValueError) as from_data_set:
        CocoDataset(tmp_path, path)
    with pytest.raises(ValueError) as from_evaluation:
        load_ground_truth(path)
    assert str(from_data_set.value) == str(from_evaluation.value) == str(from_loader.value)
