import logging

import pytest
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from detector.evaluation.category_map import category_id_to_label, label_to_category_id

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 3, "name": "car"}]


def test_maps_labels_to_ids_by_name_and_round_trips():
    class_names = ["__background__", "dog", "N/A", "person", "car"]
    to_id = label_to_category_id(class_names, CATEGORIES)
    assert to_id == {1: 18, 3: 1, 4: 3}
    to_label = category_id_to_label(class_names, CATEGORIES)
    assert {cat: label for label, cat in to_id.items()} == to_label
    assert all(to_label[to_id[label]] == label for label in to_id)
    assert all(to_id[to_label[cat]] == cat for cat in to_label)


def test_class_missing_from_dataset_is_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        to_id = label_to_category_id(["__background__", "person", "unicorn", "N/A"], CATEGORIES)
    assert to_id == {1: 1}
    assert "unicorn" in caplog.text
    assert "N/A" not in caplog.text and "__background__" not in caplog.text


def test_torchvision_coco_names_give_label_equal_to_coco_id(tiny_instances):
    names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # 91 slots, gaps named "N/A"
    to_id = label_to_category_id(names, tiny_instances.dataset["categories"])
    assert len(to_id) == 80
    assert all(label == cat for label, cat in to_id.items())


def test_two_categories_with_one_name_is_an_error():
    with pytest.raises(ValueError, match="'dog'.*18 and 19"):
        label_to_category_id(["__background__", "dog"], CATEGORIES + [{"id": 19, "name": "dog"}])
