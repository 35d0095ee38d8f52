"""The keypoint head's training targets and its decoding agree: a keypoint trained into heatmap bin k is read
back at that bin's centre in the image, so the error is at most half a bin either way and averages zero."""

from __future__ import annotations

import torch

from detector.modeling.keypoint_head import heatmaps_to_keypoints, keypoint_targets


def test_a_target_bin_decodes_to_its_centre_without_bias():
    g = torch.Generator().manual_seed(0)
    size, boxes_n, points = 56, 40, 17
    x0y0 = torch.rand(boxes_n, 2, generator=g) * 100
    # Boxes of fractional sizes, 60 to 240 px: bins 1.1 to 4.3 px wide. (A box narrower than the heatmap is
    # decoded from a downsampled map, as torchvision does, where a one-pixel peak like this one can vanish.)
    wh = 60 + torch.rand(boxes_n, 2, generator=g) * 180
    boxes = torch.cat([x0y0, x0y0 + wh], 1)  # (B, 4)
    # Two bins or more from the box's edges: bicubic resizing replicates the border, which pulls a peak in the
    # outermost bins towards the edge (torchvision's decoding, kept for its checkpoints).
    inside = 0.05 + 0.9 * torch.rand(boxes_n, points, 2, generator=g)
    xy = x0y0[:, None] + inside * wh[:, None]  # (B, P, 2)
    keypoints = torch.cat([xy, torch.full((boxes_n, points, 1), 2.0)], 2)

    index, valid = keypoint_targets(keypoints, boxes, size)
    assert valid.all()
    heatmaps = torch.full((boxes_n, points, size * size), -10.0)
    heatmaps.scatter_(2, index[..., None], 10.0)  # a peak at each target bin
    decoded = heatmaps_to_keypoints(heatmaps.view(boxes_n, points, size, size), boxes)[..., :2]

    error_in_bins = (decoded - xy) / (wh[:, None] / size)  # (B, P, 2)
    # Within half a bin, plus the half pixel of reading the peak at a whole pixel of the box.
    pixel_in_bins = (size / wh)[:, None].expand_as(error_in_bins)
    assert (error_in_bins.abs() <= 0.5 + 0.5 * pixel_in_bins + 1e-4).all()
    # No shift: a half-bin offset (a target or a decoding off by half a bin) would move the mean by 0.5.
    assert error_in_bins.mean(dim=(0, 1)).abs().max() < 0.1, error_in_bins.mean(dim=(0, 1))
