import pytest
from PIL import Image

from detector.evaluation.coco_eval import evaluate_coco
from detector.evaluation.plots import mean_precision_curve, plot_pr_curves

from .coco_samples import ground_truth_as_results, perturbed_results


def test_mean_curve_averages_to_the_ap_at_its_iou(tiny_instances):
    result = evaluate_coco(tiny_instances, perturbed_results(tiny_instances), "bbox")
    curve = mean_precision_curve(result, 0.5)
    assert curve.shape == (101,)
    assert curve.mean() == pytest.approx(result.stats["AP50"])
    assert mean_precision_curve(result, 0.75).mean() == pytest.approx(result.stats["AP75"])
    with pytest.raises(ValueError, match="IoU 0.62 is not one of"):
        mean_precision_curve(result, 0.62)


@pytest.mark.parametrize("iou_type", ["bbox", "keypoints"])
def test_writes_a_png_per_iou_type(small_coco, tmp_path, iou_type):
    result = evaluate_coco(small_coco, ground_truth_as_results(small_coco), iou_type)
    path = plot_pr_curves(result, tmp_path / "plots")
    assert path == tmp_path / "plots" / f"{iou_type}_pr.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (500, 400)


def test_plots_empty_results(small_coco, tmp_path):
    path = plot_pr_curves(evaluate_coco(small_coco, [], "segm"), tmp_path)
    assert path.is_file()
