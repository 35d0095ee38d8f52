"""detector/prediction/coco.py: record lines as COCO results of an annotation file's ids."""

from pathlib import Path

import pytest
import torch

from detector.prediction.coco import CocoEntries, check_all_named, coco_entries, image_ids_by_name
from detector.structures import Detections

IMAGES = [{"id": 139, "file_name": "000000000139.jpg"}, {"id": 5, "file_name": "val/b.png"}]


def test_images_are_found_by_their_file_name():
    assert image_ids_by_name(IMAGES, "ann.json") == {"000000000139.jpg": 139, "b.png": 5}
    check_all_named([Path("x/000000000139.jpg"), Path("b.png")], image_ids_by_name(IMAGES, "a"), "ann.json")


def test_a_name_used_twice_and_unknown_files_are_errors():
    with pytest.raises(ValueError, match="ann.json: two images are named b.png"):
        image_ids_by_name([*IMAGES, {"id": 6, "file_name": "train/b.png"}], "ann.json")
    unknown = [Path(f"photos/{i}.jpg") for i in range(5)]
    with pytest.raises(ValueError, match=r"ann.json has no image named as photos/0.jpg, photos/1.jpg, photos/2.jpg "
                                         r"and 2 more"):
        check_all_named([Path("b.png"), *unknown], image_ids_by_name(IMAGES, "a"), "ann.json")


def test_a_line_holds_the_image_id_and_its_coco_results():
    det = Detections(boxes=torch.tensor([[10.0, 20.0, 40.0, 60.0], [1.0, 1.0, 5.0, 5.0]]),
                     scores=torch.tensor([0.9, 0.3]), labels=torch.tensor([1, 2]), image_size=(80, 100))
    line = CocoEntries({"b.png": 5}, {1: 18}, with_masks=True)(Path("val/b.png"), det)
    assert line == {"file": "val/b.png", "image_id": 5,
                    "results": [{"image_id": 5, "category_id": 18, "bbox": [10.0, 20.0, 30.0, 40.0],
                                 "score": pytest.approx(0.9)}]}  # label 2 has no category: left out


def test_categories_are_matched_by_class_name_and_none_matched_is_an_error():
    dataset = {"images": IMAGES, "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}
    entries = coco_entries(dataset, "ann.json", ["__background__", "car", "circle", "person"], with_masks=False)
    assert entries.label_to_category_id == {1: 3, 3: 1} and entries.image_ids == {"000000000139.jpg": 139, "b.png": 5}
    with pytest.raises(ValueError, match=r"ann.json: no category is named as a class of the model \(circle"):
        coco_entries(dataset, "ann.json", ["__background__", "circle"], with_masks=False)
