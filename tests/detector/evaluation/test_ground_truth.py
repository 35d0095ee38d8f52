import json

import pytest

from detector.evaluation.ground_truth import check_iou_type_supported, load_ground_truth

from .coco_samples import small_coco_dict


def test_loads_an_annotation_file(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(small_coco_dict()))
    coco = load_ground_truth(path)
    assert sorted(coco.getImgIds()) == [10, 11, 12]
    assert sorted(coco.getCatIds()) == [1, 18]


@pytest.mark.parametrize("content, problem", [
    (None, "no such file"),
    ("{not json", "Expecting property name"),
    ("[]", "JSON object"),
    ('{"images": [], "categories": []}', "'annotations'"),
    ('{"images": [{"file_name": "a.png"}], "annotations": [], "categories": []}', "lacks a field"),
])
def test_a_bad_annotation_file_is_an_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=problem) as info:
        load_ground_truth(path)
    assert str(info.value).startswith(f"{path}: ")


def test_keypoints_need_keypoint_annotations(tiny_instances, small_coco):
    with pytest.raises(ValueError, match="no category of the annotations has keypoints"):
        check_iou_type_supported(tiny_instances, "keypoints")
    check_iou_type_supported(small_coco, "keypoints")
    with pytest.raises(ValueError, match="unknown IoU type 'boxes'"):
        check_iou_type_supported(small_coco, "boxes")
