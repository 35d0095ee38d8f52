import torch

from detector.mask_paste import paste_masks
from detector.modeling.box_head import fastrcnn_loss
from detector.modeling.keypoint_head import keypoint_loss, keypoint_targets
from detector.modeling.mask_head import mask_loss, mask_targets
from detector.modeling.presets import small_r18_fpn
from detector.modeling.rcnn import RCNN
from detector.structures import Targets


def test_fastrcnn_box_loss_is_quadratic_below_beta_and_linear_above():
    # 0.5 x^2 / beta below beta, |x| - 0.5 beta above (beta = 1/9): the loss gets its beta, is neither L1
    # (beta 0) nor torch's default (beta 1), and sums over the coordinates of each foreground RoI.
    beta = 1.0 / 9
    deltas = torch.zeros(2, 12)
    deltas[0, 4:6] = torch.tensor([0.05, -0.05])  # class 1 of RoI 0: below beta
    deltas[1, 8] = 2.0  # class 2 of RoI 1: above beta
    losses = fastrcnn_loss(torch.zeros(2, 3), deltas, torch.tensor([1, 2]), torch.zeros(2, 4), beta=beta)
    expected = (2 * 0.5 * 0.05**2 / beta + (2.0 - 0.5 * beta)) / 2
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(expected))


def test_fastrcnn_box_loss_uses_the_gt_class_and_normalises_by_all_rois():
    logits = torch.zeros(4, 3)
    deltas = torch.zeros(4, 12)
    deltas[0, 8:12] = 1.0  # class 2's deltas of RoI 0
    labels = torch.tensor([2, 0, 0, 0])
    gt = torch.zeros(4, 4)
    losses = fastrcnn_loss(logits, deltas, labels, gt, beta=1.0 / 9)
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(4 * (1 - 0.5 / 9) / 4))
    torch.testing.assert_close(losses["loss_classifier"], torch.log(torch.tensor(3.0)))


def test_no_objects_gives_zero_box_loss():
    losses = fastrcnn_loss(torch.randn(5, 3), torch.randn(5, 12), torch.zeros(5, dtype=torch.int64), torch.randn(5, 4), 1 / 9)
    assert losses["loss_box_reg"].item() == 0.0
    model = RCNN(small_r18_fpn()).train()
    empty = Targets(
        boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
        masks=torch.zeros(0, 64, 96, dtype=torch.uint8), keypoints=torch.zeros(0, 17, 3),
    )
    torch.manual_seed(0)
    losses = model([torch.rand(3, 64, 96)], [empty])
    assert losses["loss_rpn_box_reg"].item() == 0.0
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_mask"].item() == 0.0 and losses["loss_keypoint"].item() == 0.0
    assert losses["loss_objectness"].item() > 0 and losses["loss_classifier"].item() > 0
    sum(losses.values()).backward()  # the zero terms still backpropagate


def test_mask_targets_crop_the_gt_mask_to_the_box():
    gt = torch.zeros(1, 40, 40)
    gt[0, 10:30, 10:20] = 1  # left half of the box (10, 10, 30, 30) is on
    target = mask_targets(gt, torch.tensor([[10.0, 10.0, 30.0, 30.0]]), torch.tensor([0]), 28)
    assert target.shape == (1, 28, 28)
    assert target[0, 1:-1, 1:12].min() > 0.9 and target[0, :, 16:].max() < 0.1  # (edges: half-pixel sampling)
    logits = torch.full((1, 3, 28, 28), -20.0)
    logits[0, 1] = (target[0] - 0.5) * 40  # class 1 predicts it confidently
    assert mask_loss(logits, torch.tensor([1]), target).item() < 0.2  # soft edge pixels keep it above 0
    assert mask_loss(logits, torch.tensor([2]), target).item() > 5


def _round_trip_iou(aligned: bool, rule: str) -> float:
    """IoU with itself of a 3-px-wide bar pushed through mask_targets and pasted back by ``rule``."""
    gt = torch.zeros(1, 40, 40)
    gt[0, 10:30, 17:20] = 1  # a limb: 3 px wide, 20 px long, inside the box (10, 10, 30, 30)
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    target = mask_targets(gt, box, torch.tensor([0]), 28, aligned=aligned)
    pasted = paste_masks(target, box, (40, 40), 0.5, rule)[0]
    truth = gt[0] > 0
    return ((pasted & truth).sum() / (pasted | truth).sum()).item()


def test_aligned_targets_paste_back_in_place_with_detectron2s_rule():
    assert _round_trip_iou(aligned=True, rule="detectron2") == 1.0
    # Unaligned (torchvision's targets), the bar comes back half a pixel off: on a 3-px limb a large part.
    assert _round_trip_iou(aligned=False, rule="detectron2") < 0.7
    assert _round_trip_iou(aligned=False, rule="torchvision") < 0.7  # torchvision's targets and paste


def test_keypoint_targets_and_loss():
    boxes = torch.tensor([[0.0, 0.0, 56.0, 56.0]])
    kps = torch.tensor([[[10.5, 20.5, 2.0], [56.0, 56.0, 1.0], [70.0, 5.0, 2.0], [5.0, 5.0, 0.0]]])
    idx, valid = keypoint_targets(kps, boxes, 56)
    assert valid.tolist() == [[True, True, False, False]]  # outside the box and unlabelled don't count
    assert idx[0, 0].item() == 20 * 56 + 10 and idx[0, 1].item() == 55 * 56 + 55  # far edge: last bin
    logits = torch.zeros(1, 4, 56, 56)
    uniform = keypoint_loss(logits, idx, valid)
    torch.testing.assert_close(uniform, torch.log(torch.tensor(56.0 * 56)))
    logits.view(1, 4, -1)[0, 0, idx[0, 0]] = 50.0
    logits.view(1, 4, -1)[0, 1, idx[0, 1]] = 50.0
    assert keypoint_loss(logits, idx, valid).item() < 1e-6
