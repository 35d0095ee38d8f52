"""detector/predictor.py: what the Predictor tells its users (the service among them) about its model."""

from __future__ import annotations

from dataclasses import replace

from detector.data.coco_keypoints import COCO_KEYPOINT_NAMES
from detector.modeling.presets import small_r18_fpn
from detector.modeling.rcnn import build_model
from detector.predictor import Predictor


def test_the_predictor_names_its_classes_and_keypoints():
    predictor = Predictor(build_model(small_r18_fpn()), speed="exact")
    assert predictor.class_names == ["__background__", "circle", "square", "triangle", "person"]
    assert (predictor.has_masks, predictor.has_keypoints) == (True, True)
    assert predictor.keypoint_names == COCO_KEYPOINT_NAMES and predictor.keypoint_classes == ("person",)


def test_a_model_without_keypoints_has_no_keypoint_names_or_classes():
    predictor = Predictor(build_model(replace(small_r18_fpn(), keypoint=None)), speed="exact")
    assert predictor.has_keypoints is False
    assert predictor.keypoint_names == () and predictor.keypoint_classes == ()


def _full_mask_polygons(det):
    """The former path: K full-image masks, then contours (the reference the in-box path must equal)."""
    import cv2
    import numpy as np

    from detector.mask_paste import paste_masks

    out = []
    for mask in paste_masks(det.mask_probs, det.boxes, det.image_size).numpy().astype(np.uint8):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out.append([c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3])
    return out


def test_polygons_from_in_box_masks_equal_those_of_full_masks():
    import pytest
    import torch

    pytest.importorskip("cv2", reason="polygon output needs opencv-python-headless")
    from detector.predictor import mask_polygons
    from detector.structures import Detections

    generator = torch.Generator().manual_seed(0)
    probs = torch.rand((6, 28, 28), generator=generator)  # ragged blobs: several parts, holes, edges
    probs[1] = 1.0  # a full box
    boxes = torch.tensor([
        [10.0, 12.0, 70.0, 50.0],  # inside the image
        [-15.0, -8.0, 30.0, 25.0],  # cut by the top-left corner: the mask touches the image border
        [60.0, 40.0, 130.0, 95.0],  # cut by the bottom-right corner
        [0.0, 0.0, 100.0, 80.0],  # the whole image
        [200.0, 200.0, 220.0, 230.0],  # off the image: no polygon
        [33.3, 20.7, 34.9, 22.2],  # smaller than a few pixels
    ])
    det = Detections(boxes, torch.ones(6), torch.ones(6, dtype=torch.int64), (80, 100), mask_probs=probs)
    polygons = mask_polygons(det)
    assert polygons == _full_mask_polygons(det)
    assert all(polygons[k] for k in range(4)) and polygons[4] == []  # a real comparison, not of empty lists


def test_from_preset_reports_the_sha256_it_checked_the_file_by(tmp_path):
    """The service reports this digest (GET /v1/model) rather than hashing the file a second time."""
    from detector.weights import save_weights
    from detector.weights.catalogue import sha256_of

    path = tmp_path / "small.safetensors"
    save_weights(build_model(small_r18_fpn()), path)
    predictor = Predictor.from_preset("small_r18_fpn", path, speed="exact")
    assert predictor.weights_sha256 == sha256_of(path) and len(predictor.weights_sha256) == 64
    assert Predictor(build_model(small_r18_fpn()), speed="exact").weights_sha256 is None


def _tensors(module):
    import itertools

    return list(itertools.chain(module.parameters(), module.buffers()))


def test_a_fast_predictor_on_another_device_holds_each_weight_there_once():
    """Built on the CPU, then moved ("meta" stands for a GPU here): the device holds the fast copy's tensors
    and none of the model's that the copy replaced (the convs before folding)."""
    model = build_model(small_r18_fpn())
    predictor = Predictor(model, device="meta", speed="fast")
    on_device = _tensors(predictor._net)
    assert all(t.is_meta for t in on_device)
    copy_params = {id(p) for p in predictor._net.parameters()}
    # Of the model, only tensors the copy shares may be on the device (on CUDA they are: Module.to moves a
    # shared Parameter in place; to "meta" it makes new ones, and the model stays on the CPU).
    assert all(id(p) in copy_params for p in model.parameters() if p.is_meta)
    assert not model.backbone.conv1.weight.is_meta  # folded with bn1 into a new weight: the original stayed


def test_the_fast_mode_off_the_cpu_has_no_nnpack_and_keeps_every_conv_channels_last():
    import torch

    from detector.modeling.fast_inference import InferenceConv2d
    from detector.modeling.speeds import SPEEDS
    from detector.predictor import inference_options

    assert inference_options("fast", torch.device("cpu")) == SPEEDS["fast"]
    options = inference_options("fast", torch.device("cuda"))
    assert options == replace(SPEEDS["fast"], nnpack=False)
    fast = build_model(small_r18_fpn()).optimize_for_inference(**vars(options))
    convs = [m for m in fast.backbone.modules() if isinstance(m, InferenceConv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(c.kernel != "nnpack" for c in convs)


def test_images_go_to_the_device_as_uint8_chw_views():
    import numpy as np
    import torch

    from detector.predictor import to_device

    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image.flags.writeable = False  # as a decoded buffer may be
    tensor = to_device(image, torch.device("cpu"))
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 5, 7)
    assert torch.equal(tensor, torch.from_numpy(image.copy()).permute(2, 0, 1))


def test_warm_up_is_one_image_on_the_cpu_and_the_largest_batch_of_each_orientation_elsewhere():
    model = build_model(small_r18_fpn())
    assert [[i.shape for i in b] for b in Predictor(model, speed="exact").warm_up_batches(8)] == [[(480, 640, 3)]]
    batches = Predictor(build_model(small_r18_fpn()), device="meta", speed="exact").warm_up_batches(8)
    assert [[i.shape for i in b] for b in batches] == [[(480, 640, 3)] * 8, [(640, 480, 3)] * 8]


def test_the_padded_size_is_the_one_predict_groups_images_by():
    import numpy as np
    import torch

    from detector.modeling.transform import padded_size, preprocess

    predictor = Predictor(build_model(small_r18_fpn()), speed="exact")  # min 256, max 384, multiples of 32
    cfg = predictor.model.cfg.input
    for h, w in ((480, 640), (640, 480), (427, 640), (100, 1000)):
        image = np.zeros((h, w, 3), np.uint8)
        resized = preprocess(torch.from_numpy(image).permute(2, 0, 1), cfg)
        assert predictor.padded_size(image) == padded_size(resized.shape[-2:], cfg.size_divisible)
    assert predictor.padded_size(np.zeros((480, 640, 3), np.uint8)) == (256, 352)


def test_the_padded_size_follows_the_presets_resize_rule():
    """A Detectron2-rule model (sides rounded, not truncated): (161, 640) pads to 128 rows there, 96 by
    torchvision's rule; padded_size gives what preprocess makes."""
    from dataclasses import replace

    import numpy as np
    import torch

    from detector.modeling.transform import padded_size, preprocess

    cfg = small_r18_fpn()
    predictor = Predictor(build_model(replace(cfg, input=replace(cfg.input, resize_rule="detectron2"))), speed="exact")
    cfg = predictor.model.cfg.input
    for h, w in ((161, 640), (480, 640), (427, 640)):
        image = np.zeros((h, w, 3), np.uint8)
        resized = preprocess(torch.from_numpy(image).permute(2, 0, 1), cfg)
        assert predictor.padded_size(image) == padded_size(resized.shape[-2:], cfg.size_divisible)
    assert predictor.padded_size(np.zeros((161, 640, 3), np.uint8)) == (128, 384)
