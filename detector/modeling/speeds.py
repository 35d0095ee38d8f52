"""The inference speed modes, by name (``Predictor(speed=...)``, ``--speed``); what each option does is
in ``detector.modeling.fast_inference``. Without torch, so that the command lines can list them before importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InferenceOptions:
    """What ``RCNN.optimize_for_inference`` changes; every default is the exact model's own path."""

    fuse_bn: bool = False  # fold FrozenBN into the convs; residual blocks' ReLUs and adds as conv post-ops
    channels_last: bool = False  # NHWC trunk, FPN and RPN head: oneDNN reads it without reordering
    nnpack: bool = False  # NNPACK's Winograd 3x3 convs where they pay; the RPN head's 1x1 convs as a matmul
    bf16: bool = False  # bfloat16 autocast for convs and linear layers: approximate, for bf16 hardware
    banded_resize: bool = False  # resize the input band by band before normalising: no full-size float copy


SPEEDS: dict[str, InferenceOptions] = {
    "exact": InferenceOptions(),  # bit-identical to torchvision (tests/detector/modeling/test_parity.py)
    # The same maths, other rounding:
    "fast": InferenceOptions(fuse_bn=True, channels_last=True, nnpack=True, banded_resize=True),
    # Approximate; pays only on bf16 hardware:
    "bf16": InferenceOptions(fuse_bn=True, channels_last=True, bf16=True, banded_resize=True),
}
SPEED_NAMES = tuple(SPEEDS)
DEFAULT_SPEED = "fast"
# What --speed (predict, eval) and DETECTOR_SPEED (the service) say of the modes. The figures (how much faster,
# how far from exact) are measured, so they live with the measurements: the README's Speed section and
# bench/results/, not here.
SPEED_HELP = (f"exact: torchvision's numbers bit for bit; fast: the same maths rounded otherwise, faster on CPUs; "
              f"bf16: approximate, for bf16 hardware (default: {DEFAULT_SPEED}; how much faster: the README's "
              "Speed section and bench/results/; how: detector/modeling/fast_inference.py)")
