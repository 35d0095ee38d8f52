import pytest
import torch

from detector.modeling.anchors import AnchorConfig, AnchorGenerator, cell_anchors, octave_sizes


def test_anchors_per_location_is_scales_times_ratios():
    sizes = octave_sizes((32, 64, 128, 256, 512))
    cfg = AnchorConfig(sizes=sizes, aspect_ratios=(0.5, 1.0, 2.0))
    assert cfg.num_anchors_per_location == 9
    gen = AnchorGenerator(cfg)
    feature_sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    anchors = gen((32, 40), feature_sizes, "cpu")
    assert [a.shape[0] for a in anchors] == [h * w * 9 for h, w in feature_sizes]


def test_cell_anchors_have_the_asked_area_and_ratio():
    base = cell_anchors((128.0, 256.0, 512.0), (0.5, 1.0, 2.0))  # the original Faster R-CNN layout
    assert base.shape == (9, 4)
    w = base[:, 2] - base[:, 0]
    h = base[:, 3] - base[:, 1]
    areas = torch.tensor([128.0, 256.0, 512.0] * 3) ** 2
    torch.testing.assert_close(w * h, areas, rtol=0.02, atol=0)
    ratios = torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3)
    torch.testing.assert_close(h / w, ratios, rtol=0.02, atol=0)
    torch.testing.assert_close((base[:, 0] + base[:, 2]) / 2, torch.zeros(9))  # centred


def test_single_map_layout_and_grid_order():
    gen = AnchorGenerator(AnchorConfig(sizes=((128, 256, 512),), aspect_ratios=(0.5, 1.0, 2.0)))
    (anchors,) = gen((64, 96), [(4, 6)], "cpu")  # stride 16
    assert anchors.shape == (4 * 6 * 9, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # (H, W, A) order: the 10th anchor is the first of location (row 0, column 1).
    torch.testing.assert_close(centres[9], torch.tensor([16.0, 0.0]))
    torch.testing.assert_close(centres[6 * 9], torch.tensor([0.0, 16.0]))


def test_stride_is_integer_division_of_the_padded_size():
    gen = AnchorGenerator(AnchorConfig(sizes=((32,),), aspect_ratios=(1.0,)))
    (anchors,) = gen((800, 1216), [(13, 19)], "cpu")  # P6 of an 800x1216 batch: stride 61 x 64
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centres[19], torch.tensor([0.0, 61.0]))
    torch.testing.assert_close(centres[1], torch.tensor([64.0, 0.0]))


@pytest.mark.parametrize("padded", [(800, 1216), (1216, 800), (800, 1248), (832, 1344), (160, 224)])
def test_anchors_are_torchvisions(padded):
    """torchvision's AnchorGenerator on the padded batch sizes of real COCO images (427 x 640 -> 800 x 1199
    -> 800 x 1216, ...): the same anchors, bit for bit, at every FPN level (P6's stride is 800 // 13 = 61)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
    from torchvision.models.detection.image_list import ImageList

    cfg = AnchorConfig()
    levels = [(-(-padded[0] // s), -(-padded[1] // s)) for s in (4, 8, 16, 32, 64)]  # ceil: the FPN's sizes
    features = [torch.zeros(1, 1, h, w) for h, w in levels]
    reference = TorchvisionAnchors(cfg.sizes, (cfg.aspect_ratios,) * len(cfg.sizes))
    theirs = reference(ImageList(torch.zeros(1, 3, *padded), [padded]), features)[0]
    ours = torch.cat(AnchorGenerator(cfg)(padded, levels, torch.device("cpu")))
    assert torch.equal(ours, theirs)
