"""RoIHeads: the keypoint head serves the keypoint classes only, at inference and in training; the mask
and keypoint heads learn from at most ``train_rois_per_image`` RoIs per image."""

from __future__ import annotations

import pytest
import torch

from detector.modeling.box_head import BoxHeadConfig
from detector.modeling.keypoint_head import KeypointHeadConfig
from detector.modeling import roi_heads
from detector.modeling.mask_head import MaskHeadConfig, mask_targets
from detector.modeling.roi_heads import RoIHeads
from detector.structures import Targets

CHANNELS, NUM_CLASSES, PERSON, CIRCLE = 8, 5, 4, 1  # labels as in the synthetic classes
SIZE = (64, 64)  # one image, (H, W)


def _heads(keypoint_labels: tuple[int, ...], train_rois_per_image: int | None = None) -> RoIHeads:
    torch.manual_seed(0)
    keypoint = KeypointHeadConfig(num_convs=1, conv_dim=8, train_rois_per_image=train_rois_per_image)
    return RoIHeads(CHANNELS, NUM_CLASSES, box=BoxHeadConfig(fc_dim=32, batch_size_per_image=64, aligned=True),
                    keypoint=keypoint, keypoint_labels=keypoint_labels)


def _features() -> list[torch.Tensor]:
    """P2..P5 of one 64x64 image: [(1, C, 64 / s, 64 / s) for s in 4, 8, 16, 32]."""
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, CHANNELS, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]


def _proposals(n: int = 40) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(n, 2, generator=g) * 40
    wh = 8 + torch.rand(n, 2, generator=g) * 16
    return [torch.cat([xy, xy + wh], dim=1)]  # (n, 4) inside the image


class _RowCounter:
    """Counts the rows (RoIs) that a module receives."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = 0
        module.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.rows += inputs[0].shape[0]


def test_only_detections_of_keypoint_classes_get_keypoints_and_the_head_sees_only_their_boxes():
    heads = _heads((PERSON,)).eval()
    counter = _RowCounter(heads.keypoint_head)
    (det,) = heads.predict(_features(), _proposals(), [SIZE])
    person = det.labels == PERSON  # (K,)
    assert person.any() and (~person).any(), "a random model finds several classes"
    assert torch.equal(det.has_keypoints, person)
    assert counter.rows == int(person.sum())
    assert det.keypoints.shape == (len(det), 17, 3)
    assert det.keypoints[~person].eq(0).all()
    # The person rows are those the head gives when it serves every class (it sees each RoI alone).
    every = _heads((1, 2, 3, PERSON)).eval()
    every.load_state_dict(heads.state_dict())
    (all_det,) = every.predict(_features(), _proposals(), [SIZE])
    assert torch.equal(all_det.labels, det.labels) and all_det.has_keypoints.all()
    torch.testing.assert_close(det.keypoints[person], all_det.keypoints[person], atol=1e-4, rtol=0)


def test_no_detection_of_a_keypoint_class_runs_no_keypoint_head():
    heads = _heads((PERSON,)).eval()
    counter = _RowCounter(heads.keypoint_head)
    heads.box_head.cls_score.bias.data[PERSON] = -100.0  # nobody scores as a person
    (det,) = heads.predict(_features(), _proposals(), [SIZE])
    assert len(det) > 0 and not det.has_keypoints.any()
    assert counter.rows == 0 and det.keypoints.shape == (len(det), 17, 3)


def _targets(circle_keypoints_visible: bool) -> list[Targets]:
    """A person and a circle far apart, each with 17 keypoints in its box; the circle's count (v = 2)
    only when ``circle_keypoints_visible``, as if the data set annotated them."""
    boxes = torch.tensor([[4.0, 4.0, 28.0, 40.0], [36.0, 36.0, 60.0, 60.0]])
    g = torch.Generator().manual_seed(3)
    xy = boxes[:, None, :2] + torch.rand(2, 17, 2, generator=g) * 20  # (2, 17, 2) inside each box
    v = torch.tensor([2.0, 2.0 if circle_keypoints_visible else 0.0])[:, None, None].expand(2, 17, 1)
    return [Targets(boxes=boxes, labels=torch.tensor([PERSON, CIRCLE]), keypoints=torch.cat([xy, v], dim=-1))]


def _losses(heads: RoIHeads, targets: list[Targets]) -> dict[str, torch.Tensor]:
    torch.manual_seed(4)  # the same proposals sampled each time
    return heads(_features(), _proposals(), targets)


def test_keypoint_loss_learns_from_proposals_of_keypoint_classes_only():
    heads = _heads((PERSON,)).train()
    counter = _RowCounter(heads.keypoint_head)
    proposals, labels, _ = heads._sample(_proposals(), _targets(True))
    persons = int((labels[0] == PERSON).sum())
    assert persons > 0 and int((labels[0] == CIRCLE).sum()) > 0
    visible = _losses(heads, _targets(True))["loss_keypoint"]
    assert counter.rows == persons
    # The circle's keypoints, visible or not, change nothing: only the person's proposals count.
    assert torch.equal(visible, _losses(heads, _targets(False))["loss_keypoint"])
    assert visible > 0
    # Serving the circle too, its visible keypoints would count.
    both = _heads((CIRCLE, PERSON)).train()
    both.load_state_dict(heads.state_dict())
    assert not torch.equal(_losses(both, _targets(True))["loss_keypoint"], visible)


@pytest.mark.parametrize("cap", [1, 2])
def test_keypoint_head_learns_from_at_most_train_rois_per_image_person_rois(cap):
    every, capped = _heads((PERSON,)).train(), _heads((PERSON,), cap).train()
    rows_every, rows_capped = _RowCounter(every.keypoint_head), _RowCounter(capped.keypoint_head)

    def loss(heads: RoIHeads) -> torch.Tensor:
        torch.manual_seed(5)  # the same proposals sampled each time
        return heads(_features(), _mask_proposals(), _targets(True))["loss_keypoint"]

    torch.manual_seed(5)
    _, labels, _ = every._sample(_mask_proposals(), _targets(True))
    persons = int((labels[0] == PERSON).sum())
    assert persons > 2, "the sampler gives more person RoIs than the caps"
    loss_every, loss_capped = loss(every), loss(capped)
    assert rows_every.rows == persons and rows_capped.rows == cap
    assert loss_capped > 0 and not torch.equal(loss_capped, loss_every)
    loss_capped.backward()
    assert capped.keypoint_head.deconv.weight.grad.abs().sum() > 0
    assert torch.equal(loss(_heads((PERSON,), 1000).train()), loss_every)  # a cap above the count: no change
    with pytest.raises(ValueError, match="train_rois_per_image must be at least 1 or None, got 0"):
        KeypointHeadConfig(train_rois_per_image=0)


def test_no_object_of_a_keypoint_class_gives_zero_keypoint_loss_with_gradient():
    heads = _heads((PERSON,)).train()
    (t,) = _targets(True)
    circle_only = [Targets(boxes=t.boxes[1:], labels=t.labels[1:], keypoints=t.keypoints[1:])]
    loss = _losses(heads, circle_only)["loss_keypoint"]
    assert loss.item() == 0.0 and loss.requires_grad  # every parameter still takes part (DDP)


def test_keypoint_labels_must_be_foreground_labels():
    for labels in [(0,), (NUM_CLASSES,)]:
        with pytest.raises(ValueError, match="keypoint_labels"):
            _heads(labels)


def test_keypoint_decoding_is_torchvisions_bit_for_bit():
    """heatmaps_to_keypoints reads the boxes' sizes to the host once (one device sync, not two per box)
    and stays torchvision's decoding exactly."""
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as torchvision_decoding

    from detector.modeling.keypoint_head import heatmaps_to_keypoints

    g = torch.Generator().manual_seed(0)
    heatmaps = torch.randn(7, 17, 56, 56, generator=g)  # (B, P, S, S)
    corner = torch.rand(7, 2, generator=g) * 300
    boxes = torch.cat([corner, corner + torch.rand(7, 2, generator=g) * 200 + 0.3], dim=1)  # some under 1 px
    ours = heatmaps_to_keypoints(heatmaps, boxes)
    xy, scores = torchvision_decoding(heatmaps, boxes)
    assert torch.equal(ours[..., :2], xy[..., :2]) and torch.equal(ours[..., 2], scores)


def _mask_heads(train_rois_per_image: int | None, paste: str = "torchvision") -> RoIHeads:
    torch.manual_seed(0)
    mask = MaskHeadConfig(pool_size=7, num_convs=1, conv_dim=8, train_rois_per_image=train_rois_per_image, paste=paste)
    return RoIHeads(CHANNELS, NUM_CLASSES, box=BoxHeadConfig(fc_dim=32, batch_size_per_image=64, aligned=True), mask=mask)


def _mask_proposals() -> list[torch.Tensor]:
    """The random proposals and 8 jittered copies of each object's box: many foreground RoIs."""
    g = torch.Generator().manual_seed(6)
    boxes = _targets(True)[0].boxes.repeat(8, 1)  # (16, 4)
    return [torch.cat([_proposals()[0], boxes + torch.randn(boxes.shape, generator=g)])]


def _mask_targets() -> list[Targets]:
    """Two objects with their masks (filled boxes) in the 64 x 64 image."""
    (t,) = _targets(True)
    masks = torch.zeros(2, *SIZE, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, t.boxes.long().tolist()):
        m[y1:y2, x1:x2] = 1
    return [Targets(boxes=t.boxes, labels=t.labels, masks=masks)]


@pytest.mark.parametrize("cap", [1, 3])
def test_mask_head_learns_from_at_most_train_rois_per_image_foreground_rois(cap):
    every, capped = _mask_heads(None).train(), _mask_heads(cap).train()
    capped.load_state_dict(every.state_dict())
    rows_every, rows_capped = _RowCounter(every.mask_head), _RowCounter(capped.mask_head)
    torch.manual_seed(4)
    _, labels, _ = every._sample(_mask_proposals(), _mask_targets())
    foreground = int((labels[0] > 0).sum())
    assert foreground > 3, "the sampler gives more foreground RoIs than the caps"
    torch.manual_seed(5)
    loss_every = every(_features(), _mask_proposals(), _mask_targets())["loss_mask"]
    torch.manual_seed(5)
    loss_capped = capped(_features(), _mask_proposals(), _mask_targets())["loss_mask"]
    assert rows_every.rows == foreground and rows_capped.rows == cap
    assert loss_capped > 0 and not torch.equal(loss_capped, loss_every)
    loss_capped.backward()
    assert capped.mask_head.predictor.weight.grad.abs().sum() > 0


def test_a_cap_above_the_foreground_count_changes_nothing():
    every, capped = _mask_heads(None).train(), _mask_heads(1000).train()
    capped.load_state_dict(every.state_dict())
    torch.manual_seed(5)
    expected = every(_features(), _mask_proposals(), _mask_targets())
    torch.manual_seed(5)
    assert capped(_features(), _mask_proposals(), _mask_targets()) == expected


@pytest.mark.parametrize("paste, aligned", [("torchvision", False), ("detectron2", True)])
def test_the_mask_targets_are_sampled_as_the_paste_rules_library_does(paste, aligned, monkeypatch):
    heads = _mask_heads(None, paste).train()
    calls = []

    def recording(*args):
        calls.append(args[4])
        return mask_targets(*args)

    monkeypatch.setattr(roi_heads, "mask_targets", recording)
    torch.manual_seed(5)
    loss = heads(_features(), _mask_proposals(), _mask_targets())["loss_mask"]
    assert calls == [aligned]
    # and what it learns from is those targets: the loss with the other sampling differs
    monkeypatch.setattr(roi_heads, "mask_targets", lambda *args: mask_targets(*args[:4], not args[4]))
    torch.manual_seed(5)
    assert not torch.equal(heads(_features(), _mask_proposals(), _mask_targets())["loss_mask"], loss)


def test_a_cap_below_one_is_refused():
    with pytest.raises(ValueError, match="train_rois_per_image must be at least 1 or None, got 0"):
        MaskHeadConfig(train_rois_per_image=0)


def _pooling_heads(canonical_size: float) -> RoIHeads:
    mask = MaskHeadConfig(pool_size=7, num_convs=1, conv_dim=8, canonical_size=canonical_size)
    keypoint = KeypointHeadConfig(num_convs=1, conv_dim=8, canonical_size=canonical_size)
    return RoIHeads(CHANNELS, NUM_CLASSES, box=BoxHeadConfig(fc_dim=32, aligned=True), mask=mask, keypoint=keypoint,
                    keypoint_labels=(PERSON,))


def test_canonical_size_448_pools_masks_and_keypoints_one_level_finer_and_boxes_as_before():
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in (50.0, 150.0, 300.0, 500.0)])  # P2, P3, P4, P5 by default
    default, finer = _pooling_heads(224.0), _pooling_heads(448.0)
    for heads in (default, finer):
        assert heads.box_pooler.level_of(boxes).tolist() == [0, 1, 2, 3]
    for pooler in (default.mask_pooler, default.keypoint_pooler):
        assert pooler.level_of(boxes).tolist() == [0, 1, 2, 3]
    for pooler in (finer.mask_pooler, finer.keypoint_pooler):
        assert pooler.level_of(boxes).tolist() == [0, 0, 1, 2]
    # What a 150-px box's mask is pooled from: only P2 carries a signal here.
    features = [torch.zeros(1, CHANNELS, 512 // s, 512 // s) for s in (4, 8, 16, 32)]
    features[0] += 1.0
    box = [boxes[1:2]]
    assert default.mask_pooler(features, box).abs().sum() == 0
    assert torch.allclose(finer.mask_pooler(features, box), torch.ones(1, CHANNELS, 7, 7))
