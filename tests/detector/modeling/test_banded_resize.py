"""detector/modeling/banded_resize.py and the fast modes' input step (``preprocess(..., banded=True)``):
the same bilinear resize as ``F.interpolate`` up to float rounding, band by band, and no full-size float
copy of a large image, in ``preprocess`` or in a fast Predictor."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from detector.modeling.banded_resize import bilinear_taps, resize_banded
from detector.modeling.presets import get_preset
from detector.modeling.rcnn import RCNN
from detector.modeling.transform import InputConfig, normalize, preprocess, resized_size
from detector.predictor import Predictor

TOL = 1e-5  # normalised units (std 0.225: about 6e-4 of a uint8 step)
CFG = InputConfig()


class LargestNewTensor(TorchDispatchMode):
    """The bytes of the largest storage any op allocates while active: outputs that share an input's
    storage (views, in-place ops, copies into a slice) are not new."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.nbytes = max(self.nbytes, t.untyped_storage().nbytes())
        return out


def _uint8(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(3, H, W) uint8, a view of HWC memory as the Predictor passes a decoded image."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=g).permute(2, 0, 1)


def _reference(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's order: the image as float in [0, 1], normalised, then ``F.interpolate``: (3, H', W')."""
    x = normalize(image.float() / 255, CFG)
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("in_size, out_size", [
    ((61, 47), (23, 19)),  # downscale, odd sizes
    ((300, 200), (37, 111)),  # down one axis, up the other
    ((13, 17), (40, 33)),  # upscale
    ((1, 9), (4, 30)),  # one row
    ((7, 1), (20, 3)),  # one column
    ((1, 1), (3, 5)),
    ((5, 8), (5, 8)),  # same size
])
@pytest.mark.parametrize("band_rows", [1, 3, None])  # output rows per band: bands of one row, ragged, one band
def test_banded_resize_is_the_bilinear_resize(in_size, out_size, band_rows):
    image = _uint8(*in_size)
    band_elements = 3 * in_size[1] * (band_rows or out_size[0])
    out = resize_banded(image, out_size, band_elements=band_elements)
    assert out.shape == (3, *out_size) and out.dtype == torch.float32
    torch.testing.assert_close(normalize(out, CFG), _reference(image, out_size), atol=TOL, rtol=0)


def test_each_output_row_is_the_same_whatever_band_it_is_in():
    image = _uint8(97, 53)
    whole = resize_banded(image, (41, 29), band_elements=10**9)
    for rows in (1, 2, 5, 40):
        assert torch.equal(resize_banded(image, (41, 29), band_elements=3 * 53 * rows), whole)


def test_a_float_image_is_resized_as_its_uint8_values_divided_by_255():
    image = _uint8(45, 70)
    as_float = image.float() / 255
    out = resize_banded(as_float, (20, 31))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, resize_banded(image, (20, 31)), atol=1e-6, rtol=0)
    assert resize_banded(as_float.double(), (20, 31)).dtype == torch.float64


@pytest.mark.parametrize("in_size, out_size", [(640, 1066), (427, 800), (2910, 1369), (4000, 1066), (7744, 1333),
                                               (61, 23), (7, 3), (1, 4), (5, 5)])
def test_the_taps_are_torchs_float32_weights(in_size, out_size):
    """Interpolating 0, 1, 0, 1, ... gives, at each output, the weight torch's float32 kernel puts on the
    odd source index: the taps' weights exactly (computed with two roundings, some are 1e-4 off)."""
    i0, i1, lambda1 = bilinear_taps(in_size, out_size)
    assert (i0 >= 0).all() and ((i1 == i0 + 1) | (i1 == in_size - 1)).all()
    odd = torch.zeros(1, 1, 2, in_size)
    odd[..., 1::2] = 1
    expected = F.interpolate(odd, size=(2, out_size), mode="bilinear", align_corners=False)[0, 0, 0]  # (out,)
    weights = (i0 % 2 == 1).double() * (1 - lambda1.double()) + (i1 % 2 == 1).double() * lambda1.double()
    assert torch.equal(weights.float(), expected)


def test_bad_images_are_refused_by_name():
    with pytest.raises(ValueError, match=r"\(3, H, W\), got \(4, 5, 6\)"):
        resize_banded(torch.zeros(4, 5, 6, dtype=torch.uint8), (2, 3))
    with pytest.raises(TypeError, match="torch.int32"):
        resize_banded(torch.zeros(3, 5, 6, dtype=torch.int32), (2, 3))


def test_banded_preprocess_is_the_exact_one_up_to_rounding_and_only_where_it_saves_memory():
    large, small = _uint8(1000, 1500), _uint8(120, 160)  # resized to 800 x 1200 and 800 x 1066
    torch.testing.assert_close(preprocess(large, CFG, banded=True), preprocess(large, CFG), atol=TOL, rtol=0)
    assert torch.equal(preprocess(small, CFG, banded=True), preprocess(small, CFG))  # upscaled: torch's resize
    detectron2 = replace(CFG, resize_rule="detectron2", pixel_range=255.0, channel_order="BGR")
    assert torch.equal(preprocess(large, detectron2, banded=True), preprocess(large, detectron2))


def test_banded_preprocess_allocates_no_full_size_float_copy():
    image = _uint8(3000, 4000)  # resized to 800 x 1066
    with LargestNewTensor() as banded:
        out = preprocess(image, CFG, banded=True)
    with LargestNewTensor() as exact:
        preprocess(image, CFG)
    full_float = 4 * image.numel()
    assert exact.nbytes >= full_float  # what the measure catches: the exact path's float copy
    assert banded.nbytes <= out.nbytes < full_float / 10, (banded.nbytes, out.nbytes)  # the output is the largest


def test_a_fast_predictor_allocates_no_full_size_float_copy_of_a_large_image():
    """The whole predict of a 12 MP uint8 photo, with a small model input so that the input image is by far
    the largest thing: the fast Predictor's largest new tensor (the mask head's activations, 20 MB) is
    smaller than the uint8 image itself, a quarter of a float copy."""
    torch.manual_seed(0)
    cfg = get_preset("small_r18_fpn")  # with 28 x 28 masks: its 56 x 56 ones' activations outgrow the image
    cfg = replace(cfg, input=InputConfig(min_size=96, max_size=128), mask=replace(cfg.mask, pool_size=14))
    model = RCNN(cfg).eval()
    image = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    assert resized_size(3000, 4000, 96, 128) == (96, 128)
    with Predictor(model, speed="fast") as fast, LargestNewTensor() as seen:
        assert len(fast.predict([image])[0]) > 0
    assert seen.nbytes < image.nbytes, seen.nbytes  # a float copy would be 4 x image.nbytes
    with Predictor(model, speed="exact") as exact, LargestNewTensor() as seen:
        exact.predict([image])
    assert seen.nbytes >= 4 * image.nbytes  # the exact mode keeps torchvision's order: float first
