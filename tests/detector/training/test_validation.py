"""detector/training/validation.py: the AP that training writes to eval.json is that of the model as trained."""

from __future__ import annotations

import json

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


def test_the_end_of_training_scores_the_file_at_the_sizes_it_names(tiny_synthetic, tmp_path) -> None:
    """eval.json holds what ``detector.eval`` measures on model_final.safetensors: at the largest training
    size, which the file names (160 here), not the preset's min_size (256)."""
    from detector.eval import main as eval_main
    from detector.training import train

    from .conftest import quick_model_cfg, quick_train_cfg

    val = {"val_images": tiny_synthetic.val_images, "val_ann": tiny_synthetic.val_annotations}
    cfg = quick_train_cfg(tiny_synthetic, tmp_path / "run", iters=1, lr=1e-9, warmup_iters=0, min_sizes=(112, 160),
                          weights=builtin_weights("small_r18_fpn"), **val)
    result = train(quick_model_cfg(), cfg, preset="small_r18_fpn")
    out = tmp_path / "metrics.json"
    assert eval_main(["--weights", str(result.final_weights), "--images", str(val["val_images"]), "--ann",
                      str(val["val_ann"]), "--speed", "exact", "--metrics-out", str(out)]) == 0
    measured = json.loads(out.read_text())
    assert {t: result.eval[t]["AP"] for t in result.eval} == {t: measured[t]["AP"] for t in result.eval}
    # At the preset's size the same weights score otherwise: the comparison above can tell the two apart.
    model = build_model(quick_model_cfg())
    load_weights(model, result.final_weights)
    at_preset_size = evaluate(model, load_validation_set(**{"images_dir": val["val_images"],
                                                            "annotation_file": val["val_ann"]}),
                              val["val_images"], device=torch.device("cpu"), name="small_r18_fpn")
    assert any(at_preset_size[t]["AP"] != result.eval[t]["AP"] for t in result.eval)
