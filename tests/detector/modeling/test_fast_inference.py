"""The speed options (detector/modeling/fast_inference.py, RCNN.optimize_for_inference, Predictor(speed=...)):
"fast" gives the exact model's detections up to float rounding, "bf16" overlaps them, and neither
touches the model being trained.

Measured on this CPU (AVX2; 1 and 2 threads), "fast" (BN folded, fused bottlenecks, channels-last,
NNPACK) against "exact":
- small_r18_fpn, random init: boxes within 1.2e-4 px, scores within 5e-7 (tested at 5e-3 px, 1e-4);
- maskrcnn_r50_fpn with bench/reference.py's random weights at 320 px: features within 4e-6 relative, same
  detections and labels, boxes within 0.31-0.65 px (median 0.004-0.007 px), scores within 1.3e-3
  (tested at 1 px, 5e-3). Those weights regress boxes far more than trained ones, so rounding-level
  changes in the features move boxes ~1000x more than on small_r18_fpn; folding BN alone gives 0.21 px.
"bf16" against float32, small_r18_fpn at 192-320 px: 93-96% of detections matched at IoU > 0.9 with the
same label, scores within 1.5e-3, matched boxes within 0.3 px (tested: >= 80% matched, scores 1e-2).
On the random-weight R50 at 800x1216 bf16 matches ~1% (bench/engine.py): its chaotic weights turn
bf16's 4e-3 relative error into other boxes altogether, so bf16 needs checking on real weights.
"""

from __future__ import annotations

from dataclasses import replace

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d, box_iou

from detector.modeling import kernels
from detector.modeling.backbone import BackboneConfig, ResNetBackbone
from detector.modeling.box_head import BoxHead
from detector.modeling.fpn import FPN, FPNConfig
from detector.modeling.mask_head import MaskHead
from detector.modeling.rpn import RPNHead
from detector.modeling.fast_inference import InferenceConv2d, inference_conv
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import RCNN
from detector.modeling.speeds import InferenceOptions
from detector.modeling.transform import InputConfig, resized_size
from detector.predictor import Predictor
from detector.structures import Targets
from detector.weights.loading import load_state_dict_strict
from detector.weights.torchvision_keys import convert_torchvision_state_dict
from bench.reference import torchvision_reference
from tests.tiny_coco import tiny_coco_root

BOX_TOL = 1.0  # px, random-weight R50 at 320 px; measured: 0.31-0.65 (median 0.004-0.007)
SCORE_TOL = 5e-3  # measured: 1.3e-3


def _images(n: int = 2):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 300, 400, generator=g), torch.rand(3, 360, 280, generator=g)][:n]


@pytest.fixture(scope="module")
def r50() -> RCNN:
    tv = torchvision_reference("maskrcnn_r50_fpn", eps=0.0)
    model = RCNN(replace(get_preset("maskrcnn_r50_fpn"), input=InputConfig(min_size=320, max_size=512))).eval()
    load_state_dict_strict(model, convert_torchvision_state_dict(tv.state_dict()))
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = 0.0
    return model


@pytest.fixture(scope="module")
def small() -> RCNN:
    torch.manual_seed(0)
    return RCNN(get_preset("small_r18_fpn")).eval()


def assert_same_detections(exact, fast, box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL) -> None:
    """Same count and labels; every exact box has a fast box of its label within ``box_tol`` px."""
    for e, f in zip(exact, fast):
        assert len(e) == len(f)
        assert sorted(e.labels.tolist()) == sorted(f.labels.tolist())
        if len(e) == 0:
            continue
        dist = (e.boxes[:, None] - f.boxes[None]).abs().amax(dim=2)  # (K, K) L-inf, px
        dist[e.labels[:, None] != f.labels[None]] = float("inf")
        nearest, idx = dist.min(dim=1)
        assert nearest.max() <= box_tol, nearest.max()
        assert (e.scores - f.scores[idx]).abs().max() <= score_tol


def _trained_looking_bn(module: nn.Module) -> None:
    """Random BN statistics and affine weights, as a trained model has, not the identity of a fresh one."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_()
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()


# stem + 2 or 3 per block + downsamples; "bn": BatchNorm2d (the v2 presets' trunk), folded as FrozenBN is
@pytest.mark.parametrize("arch, norm, folded", [("resnet18", "frozen_bn", 20), ("resnet50", "frozen_bn", 53),
                                                ("resnet50", "bn", 53)])
def test_folding_bn_is_exact_in_float64(arch, norm, folded):
    torch.manual_seed(0)
    backbone = ResNetBackbone(BackboneConfig(arch=arch, norm=norm)).double().eval()
    _trained_looking_bn(backbone)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        expected = backbone(x)
        trunk = backbone.for_inference(InferenceOptions(fuse_bn=True))
        out = trunk(x)
    convs = [m for m in trunk.modules() if isinstance(m, InferenceConv2d)]
    assert len(convs) == folded and all(c.norm is None for c in convs)
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in trunk.modules())
    for a, b in zip(expected, out):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert all(torch.equal(v, state[k]) for k, v in backbone.state_dict().items())  # folding made new tensors


def test_folded_r50_trunk_in_float32_is_close_with_private_kernels_and_without(monkeypatch):
    torch.manual_seed(0)
    backbone = ResNetBackbone(BackboneConfig(arch="resnet50")).eval()
    _trained_looking_bn(backbone)
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        expected = backbone(x)
        trunk = backbone.for_inference(InferenceOptions(fuse_bn=True, channels_last=True, nnpack=True))
        fast = trunk(x.contiguous(memory_format=torch.channels_last))
        for name in kernels.PRIVATE_OPS:  # as on a torch without them: F.conv2d, F.relu
            monkeypatch.setitem(kernels.PRIVATE_OPS, name, _missing)
        with pytest.warns(RuntimeWarning, match="public ops"):
            public = trunk(x.contiguous(memory_format=torch.channels_last))
    for e, f, p in zip(expected, fast, public):
        assert ((e - f).abs().max() / e.abs().max()) < 1e-4
        assert ((e - p).abs().max() / e.abs().max()) < 1e-4


def test_group_norms_stay_after_their_convs():
    norm, kind = "gn", nn.GroupNorm
    torch.manual_seed(0)
    backbone = ResNetBackbone(BackboneConfig(arch="resnet18", norm=norm)).eval()
    x = torch.randn(1, 3, 64, 96)
    trunk = backbone.for_inference(InferenceOptions(fuse_bn=True, channels_last=True, nnpack=True))
    convs = [m for m in trunk.modules() if isinstance(m, InferenceConv2d)]
    assert len(convs) == 20 and all(isinstance(c.norm, kind) for c in convs)
    # The norms are copies holding the same tensors: nothing of the trunk's weights is duplicated.
    storages = {t.untyped_storage().data_ptr() for t in [*backbone.parameters(), *backbone.buffers()]}
    assert all(t.untyped_storage().data_ptr() in storages for c in convs for t in c.norm.parameters())
    with torch.inference_mode():
        for a, b in zip(backbone(x), trunk(x.contiguous(memory_format=torch.channels_last))):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_fpn_and_heads_fold_their_batch_norms_exactly_in_float64():
    """The v2 presets' BatchNorms after the FPN's and the heads' convs are folded as the trunk's are."""
    torch.manual_seed(0)
    cfg = get_preset("maskrcnn_r50_fpn_v2")
    fpn = FPN([64, 128], FPNConfig(norm="bn"))
    box = BoxHead(256, 5, cfg.box)
    mask = MaskHead(256, 5, cfg.mask)
    rpn = RPNHead(256, 3, conv_depth=2)
    blocks = [m.double().eval() for m in (fpn, box, mask, rpn)]
    for block in blocks:
        _trained_looking_bn(block)
    f64 = torch.float64
    inputs = [([torch.randn(2, 64, 16, 16, dtype=f64), torch.randn(2, 128, 8, 8, dtype=f64)],),
              (torch.randn(3, 256, 7, 7, dtype=f64),), (torch.randn(3, 256, 14, 14, dtype=f64),),
              ([torch.randn(1, 256, 12, 12, dtype=f64)],)]
    options = InferenceOptions(fuse_bn=True)
    with torch.no_grad():
        for block, x in zip(blocks, inputs):
            fast = block.for_inference(options)
            assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules()), type(block).__name__
            expected, out = block(*[[t.clone() for t in a] if isinstance(a, list) else a.clone() for a in x]), fast(*x)
            for a, b in zip(_flat(expected), _flat(out)):
                torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert [len(b.convs) for b in (box, mask)] == [4, 4] and box.fc2 is None


def _flat(out) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _missing():
    raise AttributeError("no such op in this torch")


def test_nnpack_conv_matches_conv_where_it_pays_and_steps_aside_elsewhere(monkeypatch):
    if not kernels.nnpack_available():
        pytest.skip("this torch has no NNPACK")
    torch.manual_seed(0)
    options = InferenceOptions(nnpack=True)
    convs = [nn.Conv2d(256, 256, 3, padding=1), nn.Conv2d(256, 16, 3, stride=2, padding=1), nn.Conv2d(16, 4, 1)]
    fast = [inference_conv(c, options) for c in convs]
    assert [c.kernel for c in fast] == ["nnpack", "conv2d", "conv2d"]  # only the 3x3 stride-1 conv
    assert fast[0].weight is convs[0].weight and fast[0].bias is convs[0].bias  # shared, not copied
    block, fast_block = nn.Sequential(*convs), nn.Sequential(*fast)
    large, small = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 16, 16)  # 4096 and 256 pixels
    expected = {"large": block(large), "small": block(small)}
    calls = []
    nnpack = torch._nnpack_spatial_convolution
    monkeypatch.setitem(kernels.PRIVATE_OPS, "nnpack_conv2d", lambda: lambda *a: calls.append(a[0].shape) or nnpack(*a))
    with torch.inference_mode():
        torch.testing.assert_close(fast_block(large), expected["large"], rtol=1e-4, atol=1e-4)
        assert calls == [(1, 256, 64, 64)]
        torch.testing.assert_close(fast_block(small), expected["small"], rtol=1e-4, atol=1e-4)
        assert len(calls) == 1  # a small map: oneDNN's convolution is faster there (nnpack_pays)
    fast_block(large).sum().backward()  # with grad: F.conv2d, into the shared parameters
    assert convs[0].weight.grad is not None and len(calls) == 1


def test_exact_model_does_not_import_the_fast_path():
    code = (
        "import sys, torch\n"
        "from detector.modeling.presets import get_preset\n"
        "from detector.modeling.rcnn import RCNN\n"
        "torch.manual_seed(0)\n"
        "model = RCNN(get_preset('small_r18_fpn')).eval()\n"
        "model.predict([torch.rand(3, 96, 128)])\n"
        "print(sorted(m for m in ('detector.modeling.fast_inference', 'detector.modeling.kernels') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_fast_copy_shares_the_tensors_it_does_not_change(r50):
    fast = r50.optimize_for_inference()
    storages = {t.untyped_storage().data_ptr() for t in [*r50.parameters(), *r50.buffers()]}
    box, fast_box = r50.roi_heads.box_head, fast.roi_heads.box_head
    assert fast_box is not box and all(a is b for a, b in zip(fast_box.parameters(), box.parameters()))
    new = [t for t in fast.parameters() if t.untyped_storage().data_ptr() not in storages]
    # New tensors: the folded backbone convs, NHWC copies of the FPN's 1x1 and the mask head's deconv and
    # predictor, the RPN head's matmul; NNPACK's convs, box head and the rest are shared.
    new_bytes = sum(t.numel() * t.element_size() for t in new)
    backbone_bytes = sum(t.numel() * t.element_size() for t in r50.backbone.parameters())
    assert backbone_bytes <= new_bytes <= backbone_bytes + 8 * 2**20, (new_bytes, backbone_bytes)
    assert fast.roi_heads.mask_head.convs[0].weight is r50.roi_heads.mask_head.convs[0].weight
    assert fast.fpn.output_convs[0].weight is r50.fpn.output_convs[0].weight


def test_fast_r50_gives_the_exact_detections(r50):
    fast = r50.optimize_for_inference(fuse_bn=True, channels_last=True, nnpack=True)
    x = torch.randn(1, 3, 320, 416)
    with torch.inference_mode():
        for a, b in zip(r50.features(x), fast.features(x)):
            assert ((a - b).abs().max() / a.abs().max()) < 1e-4
    exact, out = r50.predict(_images()), fast.predict(_images())
    assert all(len(e) > 10 for e in exact)
    assert_same_detections(exact, out)
    for e, f in zip(exact, out):
        assert f.mask_probs is not None and f.mask_probs.shape == e.mask_probs.shape


def test_fast_predictor_on_photos_larger_than_the_models_input_gives_the_exact_detections(r50):
    """COCO photos as the service passes them (uint8 views of HWC arrays), downscaled to 320 px: the fast
    mode resizes each band by band before normalising it (transform.preprocess, banded), the exact mode
    normalises a float copy and resizes it; the detections agree within the fast mode's tolerances."""
    paths = sorted((tiny_coco_root() / "val2017").glob("*.jpg"))[:2]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    cfg = r50.cfg.input
    assert all(np.prod(resized_size(*i.shape[:2], cfg.min_size, cfg.max_size)) < i.shape[0] * i.shape[1] for i in images)
    with Predictor(r50, speed="exact") as exact, Predictor(r50) as fast:
        expected, out = exact.predict(images), fast.predict(images)
    assert all(len(e) > 10 for e in expected)
    assert_same_detections(expected, out)


@pytest.mark.parametrize("preset", ["fasterrcnn_r50_fpn_v2", "maskrcnn_r50_fpn_v2"])
def test_fast_v2_gives_the_exact_detections(preset):
    """torchvision's v2 models (BatchNorm2d in trunk, FPN and heads; trained-looking statistics): every BN
    folded, the detections within the tolerance of the v1 models."""
    proposals = 300  # not 1000: the v2 box head's four convs over every RoI are most of the time
    tv = torchvision_reference(preset, rpn_post_nms_top_n_test=proposals)
    cfg = get_preset(preset)
    model = RCNN(replace(cfg, input=InputConfig(min_size=320, max_size=512),
                         rpn=replace(cfg.rpn, post_nms_top_n_test=proposals))).eval()
    load_state_dict_strict(model, convert_torchvision_state_dict(tv.state_dict()))
    fast = model.optimize_for_inference()
    assert fast.inference_only and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    exact, out = model.predict(_images(1)), fast.predict(_images(1))
    assert len(exact[0]) > 10
    assert_same_detections(exact, out)
    if cfg.mask is not None:
        assert out[0].mask_probs.shape == exact[0].mask_probs.shape


def test_fast_r50_without_private_ops_gives_the_exact_detections(r50, monkeypatch):
    """As on a torch whose private ops are gone: every kernel takes its public fallback."""
    fast = r50.optimize_for_inference()
    for name in kernels.PRIVATE_OPS:
        monkeypatch.setitem(kernels.PRIVATE_OPS, name, _missing)
    with pytest.warns(RuntimeWarning, match="public ops"):
        out = fast.predict(_images(1))
    exact = r50.predict(_images(1))
    assert len(exact[0]) > 10
    assert_same_detections(exact, out)


def test_fast_small_preset_gives_the_exact_detections(small):
    fast = small.optimize_for_inference()  # GroupNorm: nothing to fold, channels-last and NNPACK only
    assert not fast.inference_only
    images = _images()
    exact, out = small.predict(images), fast.predict(images)
    assert all(len(e) > 0 for e in exact)
    assert_same_detections(exact, out, box_tol=5e-3, score_tol=1e-4)
    for e, f in zip(exact, out):
        torch.testing.assert_close(f.keypoints[..., 2], e.keypoints[..., 2], atol=1e-3, rtol=0)


def test_bf16_detections_overlap_the_float32_ones(small):
    # 192 px: bf16 is emulated (~10x slower) on CPUs without AVX512-BF16.
    model = RCNN(replace(small.cfg, input=InputConfig(min_size=192, max_size=256))).eval()
    model.load_state_dict(small.state_dict())
    bf16 = model.optimize_for_inference(bf16=True)
    images = _images(1)
    exact, out = model.predict(images)[0], bf16.predict(images)[0]
    assert out.boxes.dtype == out.scores.dtype == out.mask_probs.dtype == torch.float32  # postprocessed in fp32
    assert len(exact) > 10 and abs(len(out) - len(exact)) <= len(exact) // 10
    iou = box_iou(exact.boxes, out.boxes) * (exact.labels[:, None] == out.labels[None])  # (K, K')
    best, idx = iou.max(dim=1)
    matched = best > 0.9
    assert matched.float().mean() >= 0.8, matched.float().mean()
    assert (exact.scores[matched] - out.scores[idx[matched]]).abs().max() <= 1e-2


def test_the_original_model_is_untouched_and_can_still_train(r50, small):
    state = {k: v.clone() for k, v in r50.state_dict().items()}
    fast = r50.optimize_for_inference()
    assert fast.inference_only and fast is not r50
    assert set(r50.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in r50.state_dict().items())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in r50.modules())
    target = Targets(boxes=torch.tensor([[10.0, 20.0, 60.0, 90.0]]), labels=torch.tensor([1]),
                     masks=torch.zeros(1, 128, 128, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="optimised for inference"):
        fast([torch.rand(3, 128, 128)], [target])
    with pytest.raises(ValueError, match="already optimised"):
        fast.optimize_for_inference()
    # A GroupNorm model's optimised copy has nothing folded: channels-last only, and it trains.
    copy = small.optimize_for_inference()
    copy.train()
    target.keypoints = torch.zeros(1, 17, 3)
    losses = copy([torch.rand(3, 128, 128)], [target])
    assert all(torch.isfinite(v) for v in losses.values())


def test_predictor_speed_modes(small):
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    exact = Predictor(small, speed="exact")
    fast = Predictor(small)  # the default
    assert fast.speed == "fast" and fast.model is small and exact.model is small
    assert_same_detections(exact.predict([image]), fast.predict([image]), box_tol=5e-3, score_tol=1e-4)
    with pytest.raises(ValueError, match="speed"):
        Predictor(small, speed="ludicrous")
