"""detector/training/validation.py: the AP that training writes to eval.json is that of the model as trained."""

from __future__ import annotations

import torch

from detector.modeling.presets import small_r18_fpn
from detector.modeling.rcnn import build_model
from detector.weights.builtin import builtin_weights
from detector.training.validation import evaluate, load_validation_set
from detector.weights import load_weights


def test_validation_runs_the_model_as_trained_not_a_fast_copy(tiny_synthetic) -> None:
    model = build_model(small_r18_fpn())
    load_weights(model, builtin_weights("small_r18_fpn"))  # trained on this synthetic data: it finds things
    model.train()
    ran = []
    # A fast copy (RCNN.optimize_for_inference) is a deep copy: the hook comes along but sees the copy's backbone.
    model.backbone.register_forward_hook(lambda module, inputs, output: ran.append(module))
    coco_gt = load_validation_set(tiny_synthetic.val_images, tiny_synthetic.val_annotations)
    results = evaluate(model, coco_gt, tiny_synthetic.val_images, device=torch.device("cpu"), name="small_r18_fpn")
    assert ran and all(module is model.backbone for module in ran)  # the 2 images went through the model itself
    assert model.training, "the model goes back to training mode"
    assert set(results) == {"bbox", "segm", "keypoints"} and results["bbox"]["AP"] > 0
