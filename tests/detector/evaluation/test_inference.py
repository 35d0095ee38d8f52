import pytest

from detector.evaluation.coco_eval import evaluate_coco
from detector.evaluation.inference import predict_coco_results

from .coco_samples import GroundTruthPredictor, write_images


def test_predicts_in_batches_and_scores_ap_1(small_coco, tmp_path):
    write_images(small_coco, tmp_path)
    predictor = GroundTruthPredictor(small_coco)
    records = small_coco.loadImgs(sorted(small_coco.getImgIds()))
    results = predict_coco_results(predictor, records, tmp_path, {1: 1, 2: 18}, batch_size=2)
    assert predictor.batch_sizes == [2, 1]
    assert len(results) == 5  # every object but the crowd
    assert all(len(r["keypoints"]) == 51 for r in results if r["category_id"] == 1)  # persons
    assert not any("keypoints" in r for r in results if r["category_id"] != 1)  # the dogs have none
    for iou_type in ("bbox", "keypoints"):
        assert evaluate_coco(small_coco, results, iou_type).stats["AP"] == pytest.approx(1.0)
    without = predict_coco_results(predictor, records, tmp_path, {1: 1}, with_keypoints=False)
    assert len(without) == 3 and not any("keypoints" in r for r in without)


def test_a_missing_or_broken_image_is_an_error_naming_it(small_coco, tmp_path):
    write_images(small_coco, tmp_path)
    (tmp_path / "b.png").unlink()
    (tmp_path / "a.png").write_bytes(b"not an image")
    records = small_coco.loadImgs(sorted(small_coco.getImgIds()))
    with pytest.raises(ValueError, match="a.png: not a readable image"):
        predict_coco_results(GroundTruthPredictor(small_coco), records, tmp_path, {1: 1})
    with pytest.raises(ValueError, match="b.png: no such image file"):
        predict_coco_results(GroundTruthPredictor(small_coco), records[1:], tmp_path, {1: 1})
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        predict_coco_results(GroundTruthPredictor(small_coco), records, tmp_path, {1: 1}, batch_size=0)
