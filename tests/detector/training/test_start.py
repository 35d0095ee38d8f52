"""detector/training/start.py: a run from an ImageNet trunk (its frozen stages exactly unchanged by training),
--trainable-backbone-layers as torchvision counts them, and the refusal to train frozen BN from random values."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torchvision import models
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from detector.modeling.backbone import BackboneConfig, ResNetBackbone
from detector.modeling.presets import PRESETS, get_preset
from detector.training import TrainConfig, train
from detector.training.checkpoint import load_checkpoint
from detector.training.start import refuse_untrained_frozen_bn, scratch_presets, with_trainable_stages
from tests.detector.test_weights_imagenet import trained_looking_classifier

from .conftest import quick_model_cfg, quick_train_cfg

FROZEN_BY_DEFAULT = ("conv1.", "bn1.", "layer1.")  # torchvision's default of 3 trainable layers freezes these


@pytest.mark.parametrize("layers", range(6))
def test_trainable_backbone_layers_train_the_stages_torchvision_trains(layers) -> None:
    ours = ResNetBackbone(BackboneConfig(arch="resnet18", trainable_stages=layers))
    theirs = _resnet_fpn_extractor(models.resnet18(norm_layer=FrozenBatchNorm2d), layers).body
    assert ({n for n, p in ours.named_parameters() if p.requires_grad}
            == {n for n, p in theirs.named_parameters() if p.requires_grad})


def test_the_rcnn_presets_train_three_stages_as_torchvision_and_the_option_overrides_it() -> None:
    assert {name: build().backbone.trainable_stages for name, build in PRESETS.items()
            if build().backbone.norm == "frozen_bn"} == dict.fromkeys(
        [n for n, build in PRESETS.items() if build().backbone.norm == "frozen_bn"], 3)
    cfg = get_preset("maskrcnn_r50_fpn")
    assert with_trainable_stages(cfg, None) == cfg
    assert with_trainable_stages(cfg, 5).backbone == replace(cfg.backbone, trainable_stages=5)
    with pytest.raises(ValueError, match="trainable backbone layers must be in 0..5, got 6"):
        with_trainable_stages(cfg, 6)


def test_a_frozen_bn_preset_from_random_values_is_refused_saying_what_to_pass(tmp_path) -> None:
    cfg = TrainConfig(out_dir=tmp_path, train_images=tmp_path, train_ann=tmp_path / "a.json")
    with pytest.raises(ValueError) as e:
        refuse_untrained_frozen_bn(get_preset("maskrcnn_r50_fpn"), cfg, "maskrcnn_r50_fpn")
    assert str(e.value) == (
        "maskrcnn_r50_fpn freezes its trunk's BatchNorm statistics (FrozenBatchNorm2d), which from random "
        "initialisation normalise nothing: it would train into nonsense. Start from an ImageNet trunk "
        "(--backbone-weights resnet50_imagenet, or a torchvision ResNet-50 classifier file) or a trained model "
        "(--weights FILE); or train small_r18_fpn, whose GroupNorm trunk trains from scratch")
    with pytest.raises(ValueError, match=r"--backbone-weights resnext101_32x8d_imagenet, or a torchvision "
                                         r"ResNeXt-101 32x8d classifier file"):
        refuse_untrained_frozen_bn(get_preset("maskrcnn_x101_32x8d_fpn"), cfg, "maskrcnn_x101_32x8d_fpn")
    assert scratch_presets() == ["small_r18_fpn"]
    for allowed in (replace(cfg, weights=Path("w.pth")), replace(cfg, backbone_weights="resnet50_imagenet"),
                    replace(cfg, resume=True)):
        refuse_untrained_frozen_bn(get_preset("maskrcnn_r50_fpn"), allowed, "maskrcnn_r50_fpn")
    refuse_untrained_frozen_bn(get_preset("small_r18_fpn"), cfg, "small_r18_fpn")  # GroupNorm: from scratch


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_frozen_stages_stay_bit_identical_to_the_file_and_the_others_learn(tiny_synthetic, tmp_path, norm) -> None:
    classifier = trained_looking_classifier("resnet18")
    trunk_file = tmp_path / "resnet18-imagenet.pth"
    torch.save(classifier.state_dict(), trunk_file)
    model_cfg = replace(quick_model_cfg(), backbone=BackboneConfig(arch="resnet18", norm=norm))
    cfg = quick_train_cfg(tiny_synthetic, tmp_path / "run", iters=2, backbone_weights=trunk_file)
    train(model_cfg, cfg, preset="custom")

    trained = {k.removeprefix("backbone."): v for k, v in load_checkpoint(cfg.out_dir / "last.pth")["model"].items()
               if k.startswith("backbone.")}
    start = classifier.state_dict()
    frozen = sorted(k for k in trained if k.startswith(FROZEN_BY_DEFAULT))
    assert frozen == sorted(k for k in start if k.startswith(FROZEN_BY_DEFAULT)
                            and not (norm == "frozen_bn" and k.endswith("num_batches_tracked")))  # FrozenBN has none
    for key in frozen:  # parameters, running statistics (and BN's step counter) of the stem and layer1
        assert torch.equal(trained[key], start[key]), key
    for stage in ("layer2", "layer3", "layer4"):
        assert not torch.equal(trained[f"{stage}.0.conv1.weight"], start[f"{stage}.0.conv1.weight"]), stage
    changed_stats = not torch.equal(trained["layer2.0.bn1.running_mean"], start["layer2.0.bn1.running_mean"])
    assert changed_stats == (norm == "bn")  # a trained BatchNorm2d updates its statistics, a frozen one never

    with pytest.raises(ValueError, match=r"last.pth: trained 3 trunk stages, not 5: resume with "
                                         r"--trainable-backbone-layers 3"):
        train(model_cfg, replace(cfg, iters=3, resume=True, trainable_backbone_layers=5), preset="custom")
