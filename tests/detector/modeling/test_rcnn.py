from dataclasses import replace

import torch

from detector.modeling.presets import PRESETS, get_preset, small_r18_fpn
from detector.modeling.rcnn import RCNN
from detector.modeling.transform import InputConfig


def _small_model() -> RCNN:
    torch.manual_seed(0)
    return RCNN(replace(small_r18_fpn(), input=InputConfig(min_size=128, max_size=192))).eval()


def _assert_equal(a, b) -> None:
    """Equal up to float rounding: a batch of N runs other kernels' blocking than N = 1 (measured:
    boxes within 2e-5 px)."""
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.keypoints, b.keypoints, atol=1e-3, rtol=0)
    assert torch.equal(a.masks(), b.masks())


def test_each_image_gets_what_it_gets_alone_whatever_it_is_batched_with():
    model = _small_model()
    g = torch.Generator().manual_seed(0)
    # 120x160 and 110x150 pad to the same 128x192 (one forward); 200x100 (portrait) runs on its own.
    images = [torch.rand(3, 120, 160, generator=g), torch.rand(3, 200, 100, generator=g), torch.rand(3, 110, 150, generator=g)]
    alone = [model.predict([image])[0] for image in images]
    for a, b in zip(alone, model.predict(images)):
        _assert_equal(a, b)


def test_pad_together_pads_as_torchvision_does():
    # Padded into a bigger batch than it needs alone, the portrait image's convolutions see the padding
    # near its border: results move a little (as in torchvision and Detectron2), but not beyond that.
    model = _small_model()
    g = torch.Generator().manual_seed(1)
    portrait, landscape = torch.rand(3, 200, 100, generator=g), torch.rand(3, 120, 160, generator=g)
    alone = model.predict([portrait])[0]
    together = model.predict([portrait, landscape], pad_together=True)[0]
    apart = model.predict([portrait, landscape])[0]
    _assert_equal(alone, apart)
    assert len(together) != len(alone) or not torch.equal(together.scores, alone.scores)


def test_detections_are_in_the_input_images_pixels():
    model = _small_model()
    image = torch.rand(3, 90, 300)
    (det,) = model.predict([(image * 255).to(torch.uint8)])  # uint8 input is accepted too
    assert det.image_size == (90, 300)
    assert len(det) > 0
    assert det.boxes[:, 0::2].min() >= 0 and det.boxes[:, 0::2].max() <= 300
    assert det.boxes[:, 1::2].min() >= 0 and det.boxes[:, 1::2].max() <= 90
    assert det.mask_probs.shape == (len(det), 28, 28)
    assert det.keypoints.shape == (len(det), 17, 3)
    assert det.masks().shape == (len(det), 90, 300)


def test_every_preset_builds():
    for name in PRESETS:
        cfg = get_preset(name)
        assert cfg.class_names[0] == "__background__"
    model = RCNN(get_preset("maskkeypointrcnn_r50_fpn"))
    assert model.roi_heads.mask_head is not None and model.roi_heads.keypoint_head is not None


def test_backbone_trainable_stages():
    cfg = get_preset("fasterrcnn_r50_fpn")  # frozen BN, layer2..layer4 train
    model = RCNN(cfg)
    trainable = {n.split(".")[0] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    gn = RCNN(small_r18_fpn())  # GroupNorm, all stages train
    assert all(p.requires_grad for p in gn.backbone.parameters())
