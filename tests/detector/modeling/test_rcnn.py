from dataclasses import replace

import torch

from detector.modeling.presets import PRESETS, get_preset, small_r18_fpn
from detector.modeling.rcnn import RCNN
from detector.modeling.transform import InputConfig


def _small_model() -> RCNN:
    torch.manual_seed(0)
    return RCNN(replace(small_r18_fpn(), input=InputConfig(min_size=128, max_size=192))).eval()


def test_one_image_alone_equals_it_in_a_batch():
    # Both images pad to the same 128x192 batch. (Where a batch pads an image further than it would
    # alone, the convolutions see the padding's features near the image's border: there results
    # differ slightly, in torchvision and Detectron2 alike.)
    model = _small_model()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 120, 160, generator=g), torch.rand(3, 110, 150, generator=g)
    alone = model.predict([a])[0]
    batched = model.predict([a, b])[0]
    assert len(alone) > 0
    assert len(alone) == len(batched)
    torch.testing.assert_close(alone.boxes, batched.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(alone.scores, batched.scores, atol=1e-4, rtol=0)
    assert torch.equal(alone.labels, batched.labels)
    torch.testing.assert_close(alone.keypoints, batched.keypoints, atol=1e-2, rtol=0)


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
