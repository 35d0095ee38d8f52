"""The loop end to end on 6 synthetic images of 128 px: what it writes, and resuming exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from detector.modeling.rcnn import build_model
from detector.training import train
from detector.training.checkpoint import load_checkpoint
from detector.modeling.presets import RECIPES
from detector.training.loop import Trainer, _training_set
from detector.weights import load_weights

from .conftest import quick_model_cfg, quick_train_cfg

LOSS_TERMS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask", "loss_keypoint"}


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_short_run_writes_metrics_a_checkpoint_and_weights_that_load(tiny_synthetic, tmp_path: Path) -> None:
    cfg = quick_train_cfg(tiny_synthetic, tmp_path / "run", iters=3, checkpoint_every=2,
                          val_images=tiny_synthetic.val_images, val_ann=tiny_synthetic.val_annotations)
    result = train(quick_model_cfg(), cfg, preset="small_r18_fpn")

    assert result.iterations == result.total_iters == 3
    lines = _metrics(cfg.out_dir)
    assert [line["iter"] for line in lines] == [1, 2, 3]
    assert set(lines[0]) == {"iter", "epoch", "lr", "total", "time"} | LOSS_TERMS
    assert lines[0]["total"] == pytest.approx(sum(lines[0][k] for k in LOSS_TERMS), rel=1e-5)
    assert [line["epoch"] for line in lines] == [0, 0, 0]  # 6 images in batches of 2

    state = load_checkpoint(result.checkpoint)  # torch.load(weights_only=True) inside
    assert state["iteration"] == 3 and state["sampler"] == [{"epoch": 0, "batch_in_epoch": 3}]
    assert state["optimizer"]["state"], "the optimizer's momentum buffers are saved"

    model = build_model(quick_model_cfg())
    load_weights(model, result.final_weights)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name
    with safe_open(str(result.final_weights), "pt") as f:
        metadata = {k: json.loads(v) for k, v in f.metadata().items()}
    assert metadata["model"]["preset"] == "small_r18_fpn"
    assert metadata["model"]["class_names"] == ["__background__", "circle", "square", "triangle", "person"]
    assert (metadata["model"]["min_size"], metadata["model"]["max_size"]) == (128, 213)  # as trained

    evaluation = json.loads((cfg.out_dir / "eval.json").read_text())
    assert set(evaluation) == {"bbox", "segm", "keypoints"} and "AP" in evaluation["bbox"]
    assert result.eval == evaluation


def test_resuming_repeats_the_uninterrupted_run_exactly(tiny_synthetic, tmp_path: Path) -> None:
    """5 iterations in one go == 2, stop, resume to 5; across an epoch's end (3 batches of 2 images),
    with multi-scale resizing and random flips."""
    common = {"iters": 5, "min_sizes": (112, 128, 144), "warmup_iters": 2, "lr": 0.01}
    whole = train(quick_model_cfg(), quick_train_cfg(tiny_synthetic, tmp_path / "whole", **common))
    first = train(quick_model_cfg(), quick_train_cfg(tiny_synthetic, tmp_path / "parts", stop_at=2, **common))
    assert first.iterations == 2 and first.final_weights is None
    assert not (tmp_path / "parts" / "model_final.safetensors").exists()
    stale = tmp_path / "parts" / ".last.pth.k1ll3d.tmp"  # what a writer killed mid-checkpoint leaves
    stale.write_bytes(b"half a checkpoint")
    rest = train(quick_model_cfg(), quick_train_cfg(tiny_synthetic, tmp_path / "parts", resume=True, **common))
    assert rest.iterations == 5
    assert not stale.exists()

    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "parts")
    assert [line["iter"] for line in b] == [1, 2, 3, 4, 5]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "time"} == {k: v for k, v in y.items() if k != "time"}
    assert [line["epoch"] for line in a] == [0, 0, 0, 1, 1]
    final_a = load_checkpoint(whole.checkpoint)["model"]
    final_b = load_checkpoint(rest.checkpoint)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_resume_without_a_checkpoint_names_the_file(tiny_synthetic, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"last\.pth: no checkpoint"):
        train(quick_model_cfg(), quick_train_cfg(tiny_synthetic, tmp_path / "empty", resume=True))


def test_a_data_set_with_other_classes_brings_its_keypoint_classes(tiny_synthetic, tmp_path: Path) -> None:
    # A model whose classes do not name the data set's trains the data set's classes instead, and the
    # keypoint classes with them: the categories that name keypoints (the synthetic person).
    model_cfg = replace(quick_model_cfg(), class_names=("__background__", "dog"), keypoint_classes=("dog",))
    cfg = quick_train_cfg(tiny_synthetic, tmp_path / "run")
    trained_cfg, _ = _training_set(model_cfg, cfg)
    assert trained_cfg.class_names == ("__background__", "circle", "square", "triangle", "person")
    assert trained_cfg.keypoint_classes == ("person",) and trained_cfg.keypoint_labels == (4,)


def test_the_presets_recipe_fills_what_the_config_leaves_open(tiny_synthetic, tmp_path: Path) -> None:
    """small_r18_fpn's recipe (RECIPES) sets the schedule, warm-up, sizes and clipping where the config says
    nothing; a value the config gives wins, and the "custom" preset trains with torchvision's defaults."""
    recipe = RECIPES["small_r18_fpn"]
    open_cfg = replace(quick_train_cfg(tiny_synthetic, tmp_path / "a"), iters=None, min_sizes=None)
    trainer = Trainer(quick_model_cfg(), open_cfg, preset="small_r18_fpn")
    assert trainer.total_iters == recipe.iters and trainer.schedule.kind == recipe.lr_schedule == "cosine"
    assert trainer.schedule.warmup_iters == recipe.warmup_iters and trainer.schedule.base_lr == recipe.base_lr
    assert trainer.train_set.min_sizes == recipe.min_sizes and trainer.clip_grad_norm == recipe.clip_grad_norm

    given = replace(open_cfg, iters=7, min_sizes=(96,), lr_schedule="step", warmup_iters=1, clip_grad_norm=0.0, lr=0.5)
    trainer = Trainer(quick_model_cfg(), given, preset="small_r18_fpn")
    assert (trainer.total_iters, trainer.schedule.kind, trainer.schedule.warmup_iters) == (7, "step", 1)
    assert trainer.train_set.min_sizes == (96,) and trainer.clip_grad_norm is None and trainer.schedule.base_lr == 0.5

    epochs = Trainer(quick_model_cfg(), replace(open_cfg, epochs=2), preset="small_r18_fpn")
    assert epochs.total_iters == 2 * len(epochs.batches.batches)  # --epochs replaces the recipe's length

    custom = Trainer(quick_model_cfg(), open_cfg, preset="custom")
    assert custom.schedule.kind == "step" and custom.clip_grad_norm is None
    assert custom.train_set.min_sizes == (quick_model_cfg().input.min_size,)
    assert custom.total_iters == 12 * len(custom.batches.batches)  # torchvision's 12 epochs
