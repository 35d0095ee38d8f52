"""The norm after a conv of the FPN and the heads, by name:

- None: none, the conv has its own bias (torchvision's v1 models, Detectron2's default heads);
- "bn": BatchNorm2d (torchvision's v2 models); in eval a fixed affine map of its running statistics,
  which the fast mode folds into the conv (``detector.modeling.fast_inference``);
- "gn": GroupNorm, which trains from scratch at any batch size (Wu & He, 2018).

A conv with a norm is ``nn.Sequential(conv, norm)``: its state_dict keys are ``.0.*`` and ``.1.*``, as in
torchvision's ``Conv2dNormActivation``. The trunk's norms are ``BackboneConfig.norm``'s (FrozenBN too).
"""

from __future__ import annotations

from torch import nn

CONV_NORMS = (None, "bn", "gn")


def check_conv_norm(norm: str | None, where: str) -> None:
    """ValueError naming ``where`` (e.g. "FPNConfig.norm") unless ``norm`` is one of CONV_NORMS."""
    if norm not in CONV_NORMS:
        raise ValueError(f"{where} must be one of {CONV_NORMS}, got {norm!r}")


def with_norm(conv: nn.Conv2d, norm: str | None, gn_groups: int = 32) -> nn.Module:
    """``conv`` itself without a norm, else ``nn.Sequential(conv, norm of its output channels)``. The caller
    builds the conv, without a bias where a norm follows (the norm's shift replaces it)."""
    check_conv_norm(norm, "norm")
    if norm is None:
        return conv
    channels = conv.out_channels
    return nn.Sequential(conv, nn.BatchNorm2d(channels) if norm == "bn" else nn.GroupNorm(gn_groups, channels))


def conv_of(module: nn.Module) -> nn.Conv2d:
    """The conv of one of ``with_norm``'s modules."""
    return module[0] if isinstance(module, nn.Sequential) else module
