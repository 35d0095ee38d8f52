"""detector/weights/imagenet.py: ImageNet classifier files as a preset's trunk; what a file is, read from
its keys and shapes; the catalogue's ImageNet entries are torchvision's files."""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision import models
from torchvision.ops import FrozenBatchNorm2d

import detector.weights.__main__ as weights_cli
import detector.weights.catalogue as catalogue
import detector.weights.imagenet as imagenet
from detector.modeling.backbone import BackboneConfig, ResNetBackbone
from detector.modeling.presets import PRESETS, get_preset
from detector.weights.catalogue import Entry, load_catalogue
from detector.weights.imagenet import (TrunkShape, arch_title, load_trunk, resolve_trunk, trunk_entry_for,
                                       trunk_shape, trunk_state)
from tests.detector.test_weights_catalogue import _loopback_server

TRUNKS = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50", "resnet101": "ResNet-101",
          "resnet152": "ResNet-152", "resnext50_32x4d": "ResNeXt-50 32x4d", "resnext101_32x8d": "ResNeXt-101 32x8d",
          "resnext101_64x4d": "ResNeXt-101 64x4d", "wide_resnet50_2": "Wide ResNet-50-2"}


def trained_looking_classifier(arch: str = "resnet18", seed: int = 0) -> nn.Module:
    """A torchvision classifier with random weights and BatchNorm statistics as training leaves them: measured
    on random images (not 0 and 1), with random scales and shifts, so that a BN loaded as identity shows."""
    torch.manual_seed(seed)
    model = getattr(models, arch)()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # the cumulative mean of the batches below
            nn.init.uniform_(m.weight, 0.5, 1.0)
            nn.init.uniform_(m.bias, -0.1, 0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    return model.eval()


def _state_of_shape(arch: str) -> dict[str, torch.Tensor]:
    """The keys of torchvision's ``arch`` classifier, each a 1-element tensor but for the one 3x3 convolution
    whose shape says the groups and width: enough to identify the file, without allocating it."""
    with torch.device("meta"):
        model = getattr(models, arch)()
    state = {k: torch.zeros(1) for k in model.state_dict()}
    state["layer1.0.conv2.weight"] = torch.zeros(model.layer1[0].conv2.weight.shape)
    return state


@pytest.mark.parametrize("arch", TRUNKS)
def test_every_torchvision_resnet_is_known_by_its_keys_and_shapes(arch) -> None:
    shape = trunk_shape(_state_of_shape(arch), "f.pth")
    assert shape.arch == arch
    assert shape.describe() == f"a {TRUNKS[arch]} trunk" == f"a {arch_title(arch)} trunk"


def test_the_file_of_another_trunk_names_what_it_is_and_what_the_preset_needs(tmp_path) -> None:
    for arch, preset, needs in (("resnet101", "maskrcnn_r50_fpn", "ResNet-50"),
                                ("resnet50", "maskrcnn_x101_32x8d_fpn", "ResNeXt-101 32x8d"),
                                ("resnext101_32x8d", "fasterrcnn_r50_fpn", "ResNet-50"),
                                ("wide_resnet50_2", "maskrcnn_r50_fpn", "ResNet-50")):
        path = tmp_path / f"{arch}.pth"
        torch.save(_state_of_shape(arch), path)
        with pytest.raises(ValueError) as e:
            load_trunk(nn.Module(), path, get_preset(preset).backbone, preset=preset)
        assert str(e.value) == f"{path}: a {TRUNKS[arch]} trunk; {preset} needs {needs}"


def test_odd_block_counts_a_detection_model_and_other_files_are_named_as_such(tmp_path) -> None:
    cfg = get_preset("maskrcnn_r50_fpn").backbone
    odd = {k: v for k, v in _state_of_shape("resnet50").items() if not k.startswith("layer3.5.")}
    with pytest.raises(ValueError, match=r"a ResNet trunk with 3/4/5/3 bottleneck blocks, which no torchvision"):
        trunk_state(odd, cfg, source="odd.pth", preset="maskrcnn_r50_fpn")
    for detection in ({"backbone.body.conv1.weight": torch.zeros(1)}, {"backbone.conv1.weight": torch.zeros(1),
                                                                       "rpn.head.conv.weight": torch.zeros(1)}):
        with pytest.raises(ValueError, match=r"^det.pth: a full detection model, not an ImageNet classifier: "
                                             r"pass it as --weights$"):
            trunk_state(detection, cfg, source="det.pth", preset="maskrcnn_r50_fpn")
    with pytest.raises(ValueError, match=r"^vit.pth: not a ResNet classifier \(no conv1 and layer1..layer4; its "
                                         r"keys begin class_token, conv_proj.weight\)"):
        trunk_state({"class_token": torch.zeros(1), "conv_proj.weight": torch.zeros(1)}, cfg, source="vit.pth",
                    preset="maskrcnn_r50_fpn")


@pytest.mark.parametrize("norm, module_type", [("frozen_bn", FrozenBatchNorm2d), ("bn", nn.BatchNorm2d)])
def test_the_trunk_loads_with_its_batchnorm_statistics_and_without_the_classifier(tmp_path, norm, module_type) -> None:
    classifier = trained_looking_classifier("resnet18")
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(classifier.state_dict(), path)
    cfg = BackboneConfig(arch="resnet18", norm=norm)
    trunk = ResNetBackbone(cfg)
    load_trunk(trunk, path, cfg, preset="custom")
    assert isinstance(trunk.layer2[0].bn1, module_type)
    loaded = trunk.state_dict()
    expected = {k: v for k, v in classifier.state_dict().items() if not k.startswith("fc.")}
    if norm == "frozen_bn":  # FrozenBatchNorm2d has no step counter
        expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert not torch.equal(trunk.layer3[1].bn2.running_var, torch.ones_like(trunk.layer3[1].bn2.running_var))
    # The trunk computes what the classifier's does, up to its last stage (FrozenBatchNorm2d rounds as
    # x * scale + shift, BatchNorm2d as (x - mean) / std * weight + bias).
    x = torch.randn(1, 3, 64, 64)
    body = nn.Sequential(*list(classifier.children())[:-2])
    with torch.no_grad():
        torch.testing.assert_close(trunk.eval()(x)[-1], body(x), rtol=1e-4, atol=1e-4)


def test_an_old_file_without_batchnorm_step_counters_loads_into_batchnorm(tmp_path) -> None:
    state = {k: v for k, v in trained_looking_classifier("resnet18").state_dict().items()
             if not k.endswith("num_batches_tracked")}  # as files saved before PyTorch 0.4.1
    cfg = BackboneConfig(arch="resnet18", norm="bn")
    trunk = ResNetBackbone(cfg)
    trunk.load_state_dict(trunk_state(state, cfg, source="old.pth", preset="custom"))
    assert torch.equal(trunk.bn1.running_mean, state["bn1.running_mean"]) and int(trunk.bn1.num_batches_tracked) == 0


def test_a_groupnorm_trunk_is_refused_naming_the_presets_that_fit_the_file(tmp_path) -> None:
    state = _state_of_shape("resnet50")
    with pytest.raises(ValueError) as e:
        trunk_state(state, BackboneConfig(arch="resnet50", norm="gn"), source="r50.pth", preset="mine")
    fitting = [n for n, build in PRESETS.items() if build().backbone.arch == "resnet50"]
    assert str(e.value) == ("r50.pth: mine's trunk uses GroupNorm, which the BatchNorm statistics of an ImageNet "
                            "classifier do not fit; mine trains from scratch without --backbone-weights; presets "
                            f"that start from a ResNet-50 trunk: {', '.join(fitting)}")
    assert "maskrcnn_r50_fpn" in fitting


class _WritesMarker:
    """Unpickling this calls open(path, "w"): code run by loading a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_trunk_file_is_read_without_unpickling_code(tmp_path) -> None:
    """The same reader as every weights file (detector/weights/loading.py): a pickle that would run code
    is refused, and runs nothing."""
    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"conv1.weight": _WritesMarker(marker)}, f)
    cfg = BackboneConfig(arch="resnet18")
    with pytest.raises(ValueError, match=f"{path}: refused to load"):
        load_trunk(ResNetBackbone(cfg), path, cfg, preset="custom")
    assert not marker.exists()


# ---- the catalogue's ImageNet files


def test_the_catalogue_lists_torchvisions_imagenet1k_v1_file_for_every_presets_trunk() -> None:
    entries = imagenet.trunk_entries()
    archs = {build().backbone.arch for build in PRESETS.values()} | {"resnet34", "resnet101"}
    assert set(entries.values()) == archs  # resnet18/34/50/101, resnext101_32x8d
    for name, arch in entries.items():
        entry, published = load_catalogue()[name], torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        assert entry.url == published.url and trunk_entry_for(arch) == name
        assert entry.file_name == published.url.rsplit("/", 1)[1] == f"{arch}-{entry.sha256_prefix}.pth"
        assert entry.imagenet_1k == published.meta["_metrics"]["ImageNet-1K"]
    assert load_catalogue()["resnet50_imagenet"].sha256_prefix == "0676ba61"  # the Mask R-CNN recipe's


@pytest.fixture
def published_trunk(tmp_path, monkeypatch):
    """A ResNet-18 classifier file served over HTTP on 127.0.0.1 as catalogue entry "r18_test", the only
    ImageNet entry beside one detection model; an empty cache."""
    served = tmp_path / "served"
    served.mkdir()
    path = served / "resnet18-test.pth"
    torch.save(trained_looking_classifier("resnet18").state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    entry = Entry(name="r18_test", trunk="resnet18", url="", file_name=path.name, sha256_prefix=digest[:8],
                  license="test")
    detection = replace(load_catalogue()["maskrcnn_r50_fpn_coco"])
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "cache"))
    with _loopback_server(served) as base:
        entries = {"r18_test": replace(entry, url=f"{base}/{path.name}"), detection.name: detection}
        for module in (catalogue, imagenet, weights_cli):
            monkeypatch.setattr(module, "load_catalogue", lambda path=None: entries)
        yield entries["r18_test"], path


def test_a_catalogue_name_is_downloaded_verified_and_loads(tmp_path, published_trunk, capsys) -> None:
    entry, served = published_trunk
    assert weights_cli.main(["download", "r18_test", "--dir", str(tmp_path / "elsewhere")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "elsewhere" / served.name)  # python -m detector.weights
    path = resolve_trunk("r18_test")  # --backbone-weights r18_test: into the cache
    assert path == tmp_path / "cache" / served.name and path.read_bytes() == served.read_bytes()
    assert (tmp_path / "cache" / f"{served.name}.sha256").is_file()  # its full SHA-256, recorded
    assert resolve_trunk(path) == path  # a file: checked against the catalogue, by its name and hash
    cfg = BackboneConfig(arch="resnet18")
    load_trunk(ResNetBackbone(cfg), path, cfg, preset="custom")
    tampered = tmp_path / served.name
    tampered.write_bytes(served.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="does not match"):
        resolve_trunk(tampered)


def test_a_name_that_is_no_trunk_says_what_to_do(published_trunk) -> None:
    with pytest.raises(ValueError, match="^maskrcnn_r50_fpn_coco: a detection model of the catalogue, not an "
                                         "ImageNet trunk: pass it as --weights$"):
        resolve_trunk("maskrcnn_r50_fpn_coco")
    with pytest.raises(ValueError, match=r"^resnet9000: weights file not found, nor a catalogue name \(its ImageNet "
                                         r"trunks: r18_test\)$"):
        resolve_trunk("resnet9000")


def test_trunk_shape_is_plain_data() -> None:
    assert TrunkShape("bottleneck", (3, 4, 23, 3), groups=32, width_per_group=8).arch == "resnext101_32x8d"
    assert TrunkShape("basic", (1, 1, 1, 1)).arch is None
