"""End to end, the start of torchvision's COCO recipe on the COCO sample: ``maskrcnn_r50_fpn`` from an
ImageNet-format ResNet-50 file (random values, trained-looking BatchNorm statistics), a few iterations at a
small size with --lr-steps, stopped, resumed, then evaluated with ``python -m detector.eval``.

Slow (a ResNet-50 Mask R-CNN trains on the CPU): ``pytest -m slow tests/detector/training/test_from_imagenet.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detector import eval as eval_cli
from detector import train as train_cli
from detector.training.checkpoint import load_checkpoint
from tests.detector.test_weights_imagenet import trained_looking_classifier
from tests.tiny_coco import tiny_coco_root

FROZEN = ("conv1.", "bn1.", "layer1.")  # the stages that the default --trainable-backbone-layers 3 freezes


def _subset(annotations: Path, out: Path, images: int) -> Path:
    """The first ``images`` landscape images of a COCO annotation file that have objects, with their objects
    (one orientation: batches of 2 make images / 2 iterations an epoch)."""
    data = json.loads(annotations.read_text())
    with_objects = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd")}
    keep = [image for image in data["images"]
            if image["id"] in with_objects and image["width"] >= image["height"]][:images]
    ids = {image["id"] for image in keep}
    data |= {"images": keep, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    out.write_text(json.dumps(data))
    return out


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_maskrcnn_from_an_imagenet_file_trains_stops_resumes_and_evaluates(tmp_path, one_thread) -> None:
    root = tiny_coco_root()
    train_ann = _subset(root / "annotations" / "instances_train2017.json", tmp_path / "train.json", images=4)
    val_ann = _subset(root / "annotations" / "instances_val2017.json", tmp_path / "val.json", images=2)
    start = trained_looking_classifier("resnet50").state_dict()
    trunk_file = tmp_path / "resnet50-imagenet.pth"  # torchvision's format: conv1 ... layer4, fc
    torch.save(start, trunk_file)
    out = tmp_path / "run"
    # 4 images in batches of 2: 2 iterations an epoch; 2 epochs, the step decay after the first. The rate
    # is torchvision's for 2 images; clipped, as a random trunk's first steps are large.
    args = ["--model", "maskrcnn_r50_fpn", "--backbone-weights", str(trunk_file), "--train-images",
            str(root / "train2017"), "--train-ann", str(train_ann), "--min-sizes", "128", "--max-size", "192",
            "--epochs", "2", "--lr-steps", "1", "--lr", "0.0025", "--warmup-iters", "1",
            "--clip-grad-norm", "10", "--log-every", "1",
            "--no-progress", "--device", "cpu", "--out", str(out)]

    assert train_cli.main(args + ["--stop-at", "2"]) == 0
    stopped = _backbone(load_checkpoint(out / "last.pth")["model"])
    assert not (out / "model_final.safetensors").exists()
    assert train_cli.main(args + ["--resume"]) == 0

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["iter"] for line in lines] == [1, 2, 3, 4]
    assert all(math.isfinite(line["total"]) for line in lines)
    assert [line["lr"] for line in lines] == pytest.approx([0.0025 * 1e-3, 0.0025, 0.00025, 0.00025])
    final = _backbone(load_file(out / "model_final.safetensors"))
    frozen = [k for k in final if k.startswith(FROZEN)]
    assert len(frozen) == len([k for k in start if k.startswith(FROZEN) and not k.endswith("num_batches_tracked")])
    for key in frozen:  # bit-identical to the file, through the stop and the resume
        assert torch.equal(final[key], start[key]) and torch.equal(stopped[key], start[key]), key
    for key in ("layer2.0.conv1.weight", "layer3.0.conv2.weight", "layer4.2.conv3.weight"):
        assert not torch.equal(stopped[key], start[key]) and not torch.equal(final[key], stopped[key]), key

    metrics = tmp_path / "metrics.json"
    assert eval_cli.main(["--weights", str(out / "model_final.safetensors"), "--images", str(root / "val2017"),
                          "--ann", str(val_ann), "--metrics-out", str(metrics)]) == 0
    scores = json.loads(metrics.read_text())
    val = json.loads(val_ann.read_text())
    names = {c["id"]: c["name"] for c in val["categories"]}
    present = {names[a["category_id"]] for a in val["annotations"]}
    for iou_type in ("bbox", "segm"):  # the model of the file (no --model: its metadata), scored on those 2 images
        assert {n for n, ap in scores["per_category_ap"][iou_type].items() if ap is not None} == present
    assert scores["timing"]["inference_s"] > 0
