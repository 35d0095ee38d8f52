"""RoIAlign as a sparse matrix product: torchvision's numbers and gradients, in every mode."""

import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

from detector.modeling import sparse_roi_align
from detector.modeling.poolers import MultiLevelRoIPooler


def _rois(count: int, images: int, seed: int) -> torch.Tensor:
    """Boxes of many sizes over 2 images of 288 x 384 px: tiny ones (under a pixel of a stride-4 map),
    large ones, ones partly or wholly outside the image, a degenerate one (x2 < x1)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * torch.tensor([420.0, 330.0]) - 30
    wh = torch.rand(count, 2, generator=g) ** 2 * 200 + 0.5
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([5.0, 5.0, 5.5, 5.2])  # smaller than a feature pixel
    boxes[1] = torch.tensor([-40.0, -40.0, -10.0, -5.0])  # wholly outside: all samples drop out
    boxes[2] = torch.tensor([380.0, 280.0, 500.0, 400.0])  # over the bottom-right edge (clamped samples)
    boxes[3] = torch.tensor([100.0, 100.0, 90.0, 120.0])  # x2 < x1
    index = torch.randint(0, images, (count, 1), generator=g).float()
    return torch.cat([index, boxes], 1)


@pytest.mark.parametrize("sampling_ratio", [0, -1, 1, 2])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size", [(7, 7), (28, 28), (14, 10)])
def test_the_pooled_features_and_their_gradient_are_torchvisions(sampling_ratio, aligned, output_size):
    g = torch.Generator().manual_seed(1)
    feature = torch.randn(2, 8, 72, 96, generator=g, requires_grad=True)
    rois = _rois(24, 2, seed=sampling_ratio + 10 * aligned)
    grad = torch.randn(24, 8, *output_size, generator=g)

    ours = sparse_roi_align.roi_align(feature, rois, output_size, 0.25, sampling_ratio, aligned)
    (ours * grad).sum().backward()
    ours_grad, feature.grad = feature.grad, None
    theirs = torchvision_roi_align(feature, rois, output_size, 0.25, sampling_ratio, aligned)
    (theirs * grad).sum().backward()

    assert ours.shape == theirs.shape == (24, 8, *output_size)
    assert theirs.abs().amax() > 1  # a real comparison: the features pooled are not zeros
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ours_grad, feature.grad, atol=2e-5, rtol=1e-5)
    assert ours[1].abs().amax() == 0  # the box outside the image pools nothing, as torchvision's


def test_float64_matches_torchvision_to_double_precision():
    g = torch.Generator().manual_seed(2)
    feature = torch.randn(1, 3, 20, 30, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(8, 1, seed=3).double() / 4
    ours = sparse_roi_align.roi_align(feature, rois, (5, 5), 0.5, 0, True)
    theirs = torchvision_roi_align(feature, rois, (5, 5), 0.5, 0, True)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda f: sparse_roi_align.roi_align(f, rois, (5, 5), 0.5, 0, True), (feature,))


def test_each_matrix_row_sums_to_one_inside_the_map():
    """Bilinear weights of a bin averaged over its samples: a box well inside the map pools a constant
    map to the constant, whatever its sampling grid."""
    rois = torch.tensor([[0, 10.0, 12.0, 50.0, 33.0], [1, 3.0, 4.0, 9.0, 60.0]])
    matrix = sparse_roi_align.sampling_matrix(rois, (2, 16, 16), (7, 7), 0.25, 0, True)
    assert matrix.shape == (2 * 49, 2 * 256)
    matrix = matrix.to_sparse_coo()
    torch.testing.assert_close(torch.sparse.sum(matrix, 1).to_dense(), torch.ones(98))
    rows, columns = matrix.indices()
    assert ((columns < 256) == (rows < 49)).all()  # RoI 0's bins read image 0 only, RoI 1's image 1 only


def test_the_pooler_trains_by_the_sparse_product_and_infers_by_torchvision(monkeypatch):
    """With autograd on the CPU the pooler's output and gradient are torchvision's; without it the
    sparse path is not taken."""
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(2, 4, 288 // s, 384 // s, generator=g, requires_grad=True) for s in (4, 8, 16, 32)]
    rois = _rois(30, 2, seed=5)
    rois = rois[rois[:, 3] > rois[:, 1]]  # proposals have positive size
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    pooler = MultiLevelRoIPooler(14, sampling_ratio=0, aligned=True, canonical_size=56.0)
    calls = []
    real = sparse_roi_align.roi_align
    monkeypatch.setattr(sparse_roi_align, "roi_align", lambda *a: calls.append(1) or real(*a))

    pooled = pooler(features, boxes)
    pooled.square().sum().backward()
    assert len(calls) == len({int(level) for level in pooler.level_of(rois[:, 1:])}) == 4  # each level so
    ours = [f.grad for f in features]
    for f in features:
        f.grad = None
    monkeypatch.setattr(torch, "is_grad_enabled", lambda: False)  # as under no_grad: torchvision's kernel
    calls.clear()
    theirs_pooled = pooler(features, boxes)
    assert not calls
    torch.testing.assert_close(pooled, theirs_pooled, atol=2e-6, rtol=1e-5)
    monkeypatch.undo()
    expected = torch.autograd.grad(theirs_pooled.square().sum(), features, allow_unused=True)
    assert all(e is not None and e.abs().amax() > 0 for e in expected)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_a_nan_box_pools_nothing_and_spoils_no_other():
    """A diverged proposal (NaN coordinates) gets no samples (torchvision's kernel casts the NaN to a pixel
    index); the other boxes pool as before, with adaptive and fixed sampling."""
    g = torch.Generator().manual_seed(6)
    feature = torch.randn(1, 4, 16, 16, generator=g)
    rois = torch.tensor([[0, 4.0, 4.0, 40.0, 30.0], [0, float("nan"), 2.0, 20.0, 20.0]])
    for sampling_ratio in (2, 0):
        ours = sparse_roi_align.roi_align(feature, rois, (7, 7), 0.25, sampling_ratio, True)
        assert torch.isfinite(ours).all() and ours[1].abs().amax() == 0
        torch.testing.assert_close(ours[:1], torchvision_roi_align(feature, rois[:1], (7, 7), 0.25, sampling_ratio, True))


def test_no_rois_pool_nothing_and_send_no_gradient():
    feature = torch.randn(2, 3, 8, 8, requires_grad=True)
    no_rois = torch.zeros(0, 5)
    pooled = sparse_roi_align.roi_align(feature, no_rois, (7, 7), 0.25, 0, True)
    assert pooled.shape == torchvision_roi_align(feature, no_rois, (7, 7), 0.25, 0, True).shape == (0, 3, 7, 7)
    pooled.sum().backward()
    assert torch.equal(feature.grad, torch.zeros_like(feature))
