from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from detector.modeling.keypoint_head import KeypointHeadConfig
from detector.modeling.presets import PRESETS, get_preset, small_r18_fpn
from detector.modeling.rcnn import RCNN, ModelConfig
from detector.weights.builtin import builtin_file
from detector.weights import load_weights
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
    assert torch.equal(a.has_keypoints, b.has_keypoints)
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
    side = 2 * model.cfg.mask.pool_size  # 56 for small_r18_fpn (its thin figures), 28 for the COCO presets
    assert det.mask_probs.shape == (len(det), side, side)
    assert det.keypoints.shape == (len(det), 17, 3)
    assert det.masks().shape == (len(det), 90, 300)


def test_only_persons_get_keypoints_and_in_image_pixels():
    # The built-in model on its sample image finds circles and persons; a random one, persons only.
    model = RCNN(small_r18_fpn()).eval()
    load_weights(model, builtin_file("small_r18_fpn.safetensors"))
    assert model.cfg.keypoint_classes == ("person",) and model.cfg.keypoint_labels == (4,)
    image = torch.from_numpy(np.array(Image.open(builtin_file("sample.png")).convert("RGB"))).permute(2, 0, 1)
    (det,) = model.predict([image])
    person = det.labels == 4
    assert person.any() and (~person).any()
    assert torch.equal(det.has_keypoints, person)
    assert det.keypoints[~person].eq(0).all()
    xy = det.keypoints[person][..., :2]  # (K', 17, 2) inside their boxes, in the input's pixels
    boxes = det.boxes[person][:, None]  # (K', 1, 4)
    assert (xy >= boxes[..., :2] - 1).all() and (xy <= boxes[..., 2:] + 1).all()
    picked = det[torch.tensor([1, 0])]  # indexing keeps keypoints and has_keypoints together
    assert torch.equal(picked.has_keypoints, det.has_keypoints[[1, 0]])


def test_keypoint_classes_must_be_classes_of_the_model():
    classes = ("__background__", "cat", "dog")
    with pytest.raises(ValueError, match=r"keypoint_classes .*'person'.*class names"):
        ModelConfig(class_names=classes, keypoint=KeypointHeadConfig())
    with pytest.raises(ValueError, match="__background__"):
        ModelConfig(class_names=classes, keypoint=KeypointHeadConfig(), keypoint_classes=("__background__",))
    assert ModelConfig(class_names=classes).keypoint is None  # no keypoint head: nothing to check
    dogs = ModelConfig(class_names=classes, keypoint=KeypointHeadConfig(), keypoint_classes=("dog",))
    assert dogs.keypoint_labels == (2,)
    coco = get_preset("maskkeypointrcnn_r50_fpn")
    assert coco.keypoint_labels == (1,)  # person, of the 91 COCO slots


def test_keypoint_classes_leave_the_state_dict_keys_as_they_are():
    # The built-in weights (weights/small_r18_fpn.safetensors) were saved before keypoint_classes.
    keys = set(RCNN(small_r18_fpn()).state_dict())
    assert keys == set(RCNN(replace(small_r18_fpn(), keypoint_classes=("square", "person"))).state_dict())
    with safe_open(str(builtin_file("small_r18_fpn.safetensors")), "pt") as f:
        assert set(f.keys()) == keys


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


def test_v2_preset_trains_with_batch_norm_and_its_frozen_stages_get_no_gradient():
    """maskrcnn_r50_fpn_v2: BatchNorm2d in trunk, FPN and heads, torchvision's trainable layers (layer2..4);
    a training step gives finite losses, gradients to what trains and none to the stem and layer1."""
    from detector.structures import Targets

    torch.manual_seed(0)
    cfg = get_preset("maskrcnn_r50_fpn_v2")
    # 64 RoIs an image (not 512): the box head's four convs and their backward are most of a step's time.
    cfg = replace(cfg, input=InputConfig(min_size=128, max_size=128), box=replace(cfg.box, batch_size_per_image=64),
                  rpn=replace(cfg.rpn, pre_nms_top_n_train=200, post_nms_top_n_train=100))
    model = RCNN(cfg).train()
    assert isinstance(model.backbone.bn1, torch.nn.BatchNorm2d) and isinstance(model.fpn.output_convs[0][1], torch.nn.BatchNorm2d)
    assert len(model.roi_heads.box_head.convs) == 4 and model.roi_heads.box_head.fc2 is None
    masks = torch.zeros(1, 128, 128, dtype=torch.uint8)
    masks[0, 20:90, 10:60] = 1
    target = Targets(boxes=torch.tensor([[10.0, 20.0, 60.0, 90.0]]), labels=torch.tensor([1]), masks=masks)
    losses = model([torch.rand(3, 128, 128), torch.rand(3, 128, 128)], [target, target])  # BN needs a batch
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = {n.split(".")[0]: p.grad is not None for n, p in model.backbone.named_parameters()}
    assert grads == {"conv1": False, "bn1": False, "layer1": False, "layer2": True, "layer3": True, "layer4": True}
    assert model.roi_heads.box_head.convs[0][1].weight.grad is not None
    assert model.roi_heads.mask_head.convs[3][1].weight.grad is not None
