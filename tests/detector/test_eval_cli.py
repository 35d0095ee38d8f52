"""``python -m detector.eval``: scoring a results file, and a model (a stand-in Predictor) over images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from detector import eval as eval_cli
from detector.evaluation.coco_eval import DETECTION_STAT_NAMES, KEYPOINT_STAT_NAMES, evaluate_coco
from detector.evaluation.ground_truth import coco_from_dict
from tests.detector.evaluation.coco_samples import (
    GroundTruthPredictor,
    ground_truth_as_results,
    perturbed_results,
    small_coco_dict,
    write_images,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dataset(tmp_path):
    """(annotation file, its COCO index) of the small COCO dict."""
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(small_coco_dict()))
    return ann, coco_from_dict(small_coco_dict())


def _write(path: Path, content) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_results_file_end_to_end(dataset, tmp_path, capsys):
    ann, coco = dataset
    results = perturbed_results(coco, seed=1)  # a seed that keeps some keypoints: 0 < AP < 1 for each type
    results_path = _write(tmp_path / "results.json", results)
    metrics_path, plots = tmp_path / "out" / "metrics.json", tmp_path / "plots"

    code = eval_cli.main(["--results", str(results_path), "--ann", str(ann),
                          "--metrics-out", str(metrics_path), "--plots", str(plots)])

    assert code == 0
    metrics = json.loads(metrics_path.read_text())
    assert list(metrics["bbox"]) == list(DETECTION_STAT_NAMES) and list(metrics["segm"]) == list(DETECTION_STAT_NAMES)
    assert list(metrics["keypoints"]) == list(KEYPOINT_STAT_NAMES)
    for iou_type in ("bbox", "segm", "keypoints"):
        assert metrics[iou_type] == evaluate_coco(coco, results, iou_type).stats
        assert 0 < metrics[iou_type]["AP"] < 1
    assert metrics["timing"]["inference_s"] is None and metrics["timing"]["scoring_s"] > 0
    assert set(metrics["per_category_ap"]["bbox"]) == {"person", "dog"}
    assert 0 <= metrics["voc"]["mAP"] <= 1
    for iou_type in ("bbox", "segm", "keypoints"):
        with Image.open(plots / f"{iou_type}_pr.png") as image:
            assert image.format == "PNG"
    out = capsys.readouterr().out
    assert out.count("Average Precision") == 6 + 6 + 5
    assert "== keypoints ==" in out and "category" in out and "VOC07 11-point AP@0.5" in out
    assert "timing: inference -, scoring" in out


def test_iou_types_can_be_chosen(dataset, tmp_path):
    ann, coco = dataset
    results_path = _write(tmp_path / "results.json", ground_truth_as_results(coco))
    metrics_path = tmp_path / "metrics.json"
    assert eval_cli.main(["--results", str(results_path), "--ann", str(ann), "--iou-types", "segm",
                          "--metrics-out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    assert "bbox" not in metrics and "keypoints" not in metrics and "voc" not in metrics


def test_empty_results_score_0(dataset, tmp_path):
    ann, _ = dataset
    results_path = _write(tmp_path / "results.json", [])
    metrics_path = tmp_path / "metrics.json"
    assert eval_cli.main(["--results", str(results_path), "--ann", str(ann), "--iou-types", "bbox", "keypoints",
                          "--metrics-out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["bbox"]["AP"] == 0.0 and metrics["keypoints"]["AP"] == 0.0 and metrics["voc"]["mAP"] == 0.0


@pytest.mark.parametrize("case", ["unknown image", "unknown category", "missing field", "missing ann",
                                  "keypoints without keypoint annotations"])
def test_bad_input_exits_2_naming_the_file(dataset, tmp_path, capsys, case):
    ann, coco = dataset
    results = ground_truth_as_results(coco)
    argv_extra = []
    if case == "unknown image":
        results[1]["image_id"] = 777
        expected = "result 1: image id 777 is not in the annotations"
    elif case == "unknown category":
        results[0]["category_id"] = 90
        expected = "result 0: category id 90 is not in the annotations"
    elif case == "missing field":
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        argv_extra = ["--iou-types", "segm"]
        expected = "provides only bbox, keypoints (segm needs 'segmentation')"
    elif case == "missing ann":
        ann = tmp_path / "no_such_ann.json"
        expected = "no such file"
    else:
        dataset = small_coco_dict()
        del dataset["categories"][0]["keypoints"]
        _write(ann, dataset)
        argv_extra = ["--iou-types", "keypoints"]
        expected = ("keypoints asked for, but no category of the annotations has keypoints "
                    "(use a person_keypoints_*.json file)")
    results_path = _write(tmp_path / "results.json", results)

    code = eval_cli.main(["--results", str(results_path), "--ann", str(ann), *argv_extra])

    assert code == 2
    blamed = ann if case in ("missing ann", "keypoints without keypoint annotations") else results_path
    assert capsys.readouterr().err.strip() == f"error: {blamed}: {expected}"


def test_model_path_with_a_stand_in_predictor(dataset, tmp_path, monkeypatch, capsys):
    ann, coco = dataset
    write_images(coco, tmp_path / "images")
    predictor = GroundTruthPredictor(coco)
    loaded = []
    monkeypatch.setattr(eval_cli, "load_predictor", lambda *args: loaded.append(args) or predictor)
    out_path, metrics_path = tmp_path / "results.json", tmp_path / "metrics.json"

    code = eval_cli.main(["--model", "stand-in", "--weights", "w.pt", "--images", str(tmp_path / "images"),
                          "--ann", str(ann), "--batch-size", "3", "--out", str(out_path),
                          "--metrics-out", str(metrics_path), "--speed", "exact"])

    assert code == 0
    assert loaded == [("stand-in", Path("w.pt"), "cpu", "exact", "torch", None)] and predictor.batch_sizes == [3]
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {"bbox", "keypoints", "per_category_ap", "voc", "timing"}  # no masks: no segm
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["keypoints"]["AP"] == pytest.approx(1.0)
    assert metrics["timing"]["inference_s"] > 0
    written = json.loads(out_path.read_text())
    assert len(written) == 5 and {"image_id", "category_id", "bbox", "score", "keypoints"} <= set(written[0])
    assert "timing: inference " in capsys.readouterr().out

    (tmp_path / "images" / "c.png").unlink()
    assert eval_cli.main(["--model", "stand-in", "--images", str(tmp_path / "images"), "--ann", str(ann)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'images' / 'c.png'}: no such image file"
    assert eval_cli.main(["--model", "stand-in", "--images", str(tmp_path / "images"), "--ann", str(ann),
                          "--iou-types", "segm"]) == 2
    assert "error: model stand-in: provides only bbox, keypoints" in capsys.readouterr().err


def test_usage_errors_exit_2(dataset, capsys):
    ann, _ = dataset
    for argv in (["--ann", str(ann)], ["--model", "m", "--ann", str(ann)],
                 ["--model", "m", "--results", "r.json", "--ann", str(ann)]):
        with pytest.raises(SystemExit) as info:
            eval_cli.main(argv)
        assert info.value.code == 2
    assert "--model needs --images" in capsys.readouterr().err


@pytest.mark.slow  # ~5-8 s: a fresh Python imports torch; run with: make test-slow
def test_runs_as_a_module(dataset, tmp_path):
    ann, coco = dataset
    results_path = _write(tmp_path / "results.json", ground_truth_as_results(coco))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "detector.eval", "--results", str(results_path), "--ann", str(ann),
                           "--iou-types", "bbox"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in done.stdout


def test_model_problems_exit_2(dataset, tmp_path, monkeypatch, capsys):
    ann, coco = dataset
    write_images(coco, tmp_path / "images")
    argv = ["--model", "stand-in", "--images", str(tmp_path / "images"), "--ann", str(ann)]

    def missing_weights(*args):
        raise FileNotFoundError(2, "No such file or directory", "w.pt")

    monkeypatch.setattr(eval_cli, "load_predictor", missing_weights)
    assert eval_cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == "error: model stand-in: [Errno 2] No such file or directory: 'w.pt'"

    predictor = GroundTruthPredictor(coco)
    predictor.class_names = ["__background__", "cat", "kite"]
    monkeypatch.setattr(eval_cli, "load_predictor", lambda *args: predictor)
    assert eval_cli.main(argv) == 2
    assert capsys.readouterr().err.strip() == (f"error: {ann}: no category is named as a class of model stand-in "
                                               "(cat, kite, ...)")


def test_real_model_over_generated_images(tmp_path, capsys):
    """The real small model (built-in weights where present) over synthetic images, all three IoU types."""
    from detector.data.synthetic import write_synthetic

    paths = write_synthetic(tmp_path / "synth", train=0, val=3, size=128, seed=5)
    metrics_path = tmp_path / "metrics.json"
    results_path = tmp_path / "results.json"
    code = eval_cli.main([
        "--model", "small_r18_fpn", "--images", str(paths.val_images), "--ann", str(paths.val_annotations),
        "--out", str(results_path), "--metrics-out", str(metrics_path),
    ])
    assert code == 0
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics["bbox"]) >= {"AP", "AP50", "AR100"} and set(metrics["keypoints"]) >= {"AP", "AR"}
    for iou_type in ("bbox", "segm", "keypoints"):
        # The built-in model finds the synthetic shapes (AP 0.35-0.42); a wrong category map or box format gives ~0.
        assert metrics[iou_type]["AP"] > 0.2 and all(v == -1 or 0 <= v <= 1 for v in metrics[iou_type].values())
    results = json.loads(results_path.read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(results[0])
    persons = {c["id"] for c in json.loads(paths.val_annotations.read_text())["categories"] if "keypoints" in c}
    assert any(r["category_id"] in persons for r in results)
    assert all(("keypoints" in r) == (r["category_id"] in persons) for r in results)  # keypoints for persons only
    assert metrics["timing"]["inference_s"] > 0


def test_default_iou_types_leave_out_keypoints_an_instances_file_cannot_score(tmp_path):
    from detector.data.synthetic import write_synthetic

    paths = write_synthetic(tmp_path / "synth", train=0, val=1, size=96, seed=1)
    data = json.loads(paths.val_annotations.read_text())
    for category in data["categories"]:
        category.pop("keypoints", None)
        category.pop("skeleton", None)
    ann = tmp_path / "instances_only.json"
    ann.write_text(json.dumps(data))
    metrics_path = tmp_path / "m.json"
    args = ["--model", "small_r18_fpn", "--images", str(paths.val_images), "--ann", str(ann), "--metrics-out", str(metrics_path)]
    assert eval_cli.main(args) == 0
    assert set(json.loads(metrics_path.read_text())) >= {"bbox", "segm"}
    assert "keypoints" not in json.loads(metrics_path.read_text())
    assert eval_cli.main(args + ["--iou-types", "keypoints"]) == 2  # asked for explicitly: a clear error


def test_model_results_on_real_coco_images_are_torchvisions(tmp_path, capsys):
    """``--model`` with a torchvision checkpoint in exact mode writes torchvision's detections, its label as
    the COCO category id, and pycocotools gives the same AP, on real COCO images at their own sizes (ones a
    float32 resize scale used to get 1 px off). To make the AP mean something with random weights, the
    annotation file also holds 5 of torchvision's own detections per image as ground truth."""
    import torch

    from detector.data.images import read_image
    from detector.evaluation.ground_truth import load_ground_truth
    from bench.reference import torchvision_reference
    from tests.tiny_coco import tiny_coco_root

    root = tiny_coco_root()
    full = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    files = {"000000006818.jpg", "000000037777.jpg"}  # 640 x 427 and 230 x 352
    images = [im for im in full["images"] if im["file_name"] in files]
    category_ids = {c["id"] for c in full["categories"]}
    tv = torchvision_reference("fasterrcnn_r50_fpn", min_size=800, max_size=1333, eps=0.0)
    weights = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), weights)

    expected, annotations = [], [a for a in full["annotations"] if a["image_id"] in {im["id"] for im in images}]
    for im in images:
        array = read_image(root / "val2017" / im["file_name"])
        with torch.no_grad():
            out = tv([torch.from_numpy(array).permute(2, 0, 1).float() / 255])[0]
        for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            if label in category_ids:  # torchvision's 91 slots hold 11 unused ("N/A") ones
                x1, y1, x2, y2 = box
                expected.append({"image_id": im["id"], "category_id": label, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                 "score": score})
        for r in [r for r in expected if r["image_id"] == im["id"]][:5]:
            annotations.append({"id": 10**9 + len(annotations), "image_id": im["id"], "category_id": r["category_id"],
                                "bbox": r["bbox"], "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0})
    ann = _write(tmp_path / "ann.json", {**full, "images": images, "annotations": annotations})
    results_path, metrics_path = tmp_path / "results.json", tmp_path / "metrics.json"

    code = eval_cli.main(["--model", "fasterrcnn_r50_fpn", "--weights", str(weights), "--speed", "exact",
                          "--images", str(root / "val2017"), "--ann", str(ann), "--out", str(results_path),
                          "--metrics-out", str(metrics_path)])

    assert code == 0, capsys.readouterr().err
    results = json.loads(results_path.read_text())
    assert len(results) == len(expected) > 100
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
    for ours, theirs in zip(sorted(results, key=key), sorted(expected, key=key)):
        assert ours == theirs
    reference_ap = evaluate_coco(load_ground_truth(ann), expected, "bbox").stats["AP"]
    assert reference_ap > 0.05
    assert json.loads(metrics_path.read_text())["bbox"]["AP"] == pytest.approx(reference_ap, abs=1e-9)


def test_under_torchrun_each_process_predicts_on_its_own_gpu(dataset, tmp_path, monkeypatch):
    """--device cuda on the process of local rank 1 loads the model on cuda:1 (init_distributed's device), not
    on cuda:0 with every other process."""
    import torch

    from detector import distributed

    ann, coco = dataset
    write_images(coco, tmp_path / "images")
    monkeypatch.setattr(distributed, "init_distributed",
                        lambda device, backend=None: (distributed.DistInfo(), torch.device("cuda", 1)))
    loaded = []
    monkeypatch.setattr(eval_cli, "load_predictor", lambda *args: loaded.append(args) or GroundTruthPredictor(coco))
    assert eval_cli.main(["--model", "stand-in", "--images", str(tmp_path / "images"), "--ann", str(ann),
                          "--device", "cuda", "--no-keep-freed-memory"]) == 0
    assert [args[2] for args in loaded] == ["cuda:1"]
