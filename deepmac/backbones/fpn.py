"""Feature Pyramid Network (Lin et al., 2017) on a C2..C5 trunk: the Mask R-CNN backbone.

``FPNBackbone`` maps normalised images ``(B, 3, H, W)`` to ``[P2, P3, P4, P5, P6]`` at strides
4, 8, 16, 32 and 64, every level with ``out_channels`` (256) channels. The layout follows
detectron2's ``FPN`` (``build_resnet_fpn_backbone``): a biased 1x1 lateral per trunk level, a
nearest x2 top-down sum, a biased 3x3 output conv per level, no normalisation in the FPN
itself, and P6 = max-pool(kernel 1, stride 2) of P5 (``LastLevelMaxPool``), which the RPN uses
and the RoI heads do not. Model Garden's FPN differs in two places (a stride-2 3x3 conv for P6
and BN after the output convs); ``top_block="conv"`` gives its P6.

Any trunk returning ``(C2, C3, C4, C5)`` with an ``out_channels`` tuple fits (``ResNetTrunk``,
``EfficientNetLiteTrunk``); ``FPN_TRUNKS`` names them. ``FPNStride4`` wraps an ``FPNBackbone``
into the stride-4 ``Backbone`` contract (``[P2]``), e.g. for a CenterNet on a ResNet-FPN.

Frozen BatchNorm (``norm="frozen_bn"``, detectron2's default for ImageNet-initialised trunks
trained with small per-device batches) replaces every trunk ``BatchNorm2d`` by a fixed affine map
that keeps the loaded statistics; the official Deep-MARC instead trains synchronised BN over a
batch of 64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.backbones.base import Backbone
from deepmac.backbones.efficientnet import EfficientNetLiteTrunk, lite_stages
from deepmac.backbones.resnet import RESNET_SPECS, ResNetTrunk

__all__ = [
    "FPN",
    "FPN_TRUNKS",
    "FPNBackbone",
    "FPNStride4",
    "FrozenBatchNorm2d",
    "build_fpn_backbone",
    "freeze_batch_norm",
    "freeze_stages",
    "trunk_stages",
]

#: Valid ``norm`` values of the trunk.
TRUNK_NORMS = ("bn", "frozen_bn")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters: ``y = x * scale + shift``.

    Holds the same four tensors as ``nn.BatchNorm2d`` (``weight``, ``bias``, ``running_mean``,
    ``running_var``) as buffers, so a BN state_dict loads into it (``num_batches_tracked`` is
    not kept). Nothing is trained and the statistics never move, in train or eval mode.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # a BN file's counter: meaningless
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


@torch.no_grad()
def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by a ``FrozenBatchNorm2d`` holding its
    current statistics and affine parameters (in place; also returns ``module``)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replaced = freeze_batch_norm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _c2_xavier_fill(conv: nn.Conv2d) -> nn.Conv2d:
    # detectron2's FPN init (Caffe2 "XavierFill"): kaiming-uniform with a = 1, zero bias.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class FPN(nn.Module):
    """Top-down pyramid over ``(C2, C3, C4, C5)``: ``[P2, P3, P4, P5, P6]``.

    ``P5 = out5(lat5(C5))``; for finer levels ``x_l = lat_l(C_l) + up2(x_{l+1})``,
    ``P_l = out_l(x_l)``; ``P6`` from ``P5`` (``top_block="maxpool"``, detectron2) or from a
    stride-2 3x3 conv of ``P5`` (``"conv"``, Model Garden), or absent (``None``).

    Args:
        in_channels: channels of C2..C5.
        out_channels: channels of every pyramid level (256).
        top_block: ``"maxpool"``, ``"conv"`` or ``None``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        *,
        out_channels: int = 256,
        top_block: str | None = "maxpool",
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must list the C2..C5 channels, got {tuple(in_channels)}")
        if top_block not in ("maxpool", "conv", None):
            raise ValueError(f"top_block must be 'maxpool', 'conv' or None, got {top_block!r}")
        self.out_channels = out_channels
        self.top_block = top_block
        self.laterals = nn.ModuleList(
            _c2_xavier_fill(nn.Conv2d(c, out_channels, 1)) for c in in_channels
        )
        self.outputs = nn.ModuleList(
            _c2_xavier_fill(nn.Conv2d(out_channels, out_channels, 3, padding=1))
            for _ in in_channels
        )
        self.p6 = (
            _c2_xavier_fill(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1))
            if top_block == "conv"
            else None
        )

    @property
    def strides(self) -> tuple[int, ...]:
        return (4, 8, 16, 32, 64) if self.top_block else (4, 8, 16, 32)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """``[C2 (B, c2, H/4, W/4), ..., C5 (B, c5, H/32, W/32)]`` -> ``[P2 (B, C, H/4, W/4),
        ..., P5 (B, C, H/32, W/32), P6 (B, C, H/64, W/64)]`` (no P6 when ``top_block`` is None)."""
        if len(features) != 4:
            raise ValueError(f"FPN expects the 4 maps C2..C5, got {len(features)}")
        x = self.laterals[3](features[3])
        outputs = [self.outputs[3](x)]
        for level in (2, 1, 0):
            lateral = self.laterals[level](features[level])
            x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.outputs[level](x))
        if self.top_block == "maxpool":
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        elif self.top_block == "conv":
            outputs.append(self.p6(outputs[-1]))
        return outputs


class FPNBackbone(nn.Module):
    """A C2..C5 trunk (``body``) + ``FPN`` (``fpn``).

    Args:
        body: module mapping ``(B, 3, H, W)`` to ``[C2, C3, C4, C5]`` with an ``out_channels``
            tuple attribute.
        out_channels: FPN channels.
        top_block: see ``FPN``.

    Attributes:
        out_channels: channels of every level. strides: stride of each returned level.
        size_multiple: ``H`` and ``W`` must be multiples of it (32: C5 is at stride 32 and the
            top-down sums need exact x2 sizes).

    Forward: ``(B, 3, H, W)`` normalised images -> ``[P2, ..., P6]``, ``(B, C, H/s, W/s)`` each.
    """

    size_multiple = 32

    def __init__(
        self, body: nn.Module, *, out_channels: int = 256, top_block: str | None = "maxpool"
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = FPN(body.out_channels, out_channels=out_channels, top_block=top_block)
        self.out_channels = out_channels
        self.strides = self.fpn.strides

    def forward(self, images: Tensor) -> list[Tensor]:
        Backbone.check_images(self, images)  # same messages as every other backbone
        return self.fpn(self.body(images))


class FPNStride4(Backbone):
    """The stride-4 ``Backbone`` contract on an ``FPNBackbone``: ``(B, 3, H, W) -> [P2]``.

    Lets a model built for one stride-4 map (CenterNet, the box-prompted model) run on a
    ResNet-FPN; P6 is not computed.
    """

    def __init__(self, fpn_backbone: FPNBackbone) -> None:
        super().__init__()
        self.inner = fpn_backbone
        self.body = fpn_backbone.body  # so classifier weight files load into the trunk
        self.inner.fpn.top_block = None  # P6 is not needed
        self.inner.strides = self.inner.fpn.strides
        self.out_channels = fpn_backbone.out_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W) -> [(B, C, H/4, W/4)]``."""
        self.check_images(images)
        return [self.inner(images)[0]]


def trunk_stages(body: nn.Module) -> list[list[nn.Module]]:
    """The trunk's modules by stage: ``[stem, stage producing C2, C3, C4, C5]``.

    Known layouts: ``ResNetTrunk`` (``conv1/bn1``, ``layer1..4``) and ``EfficientNetLiteTrunk``
    (``_conv_stem/_bn0``, then its ``_blocks`` cut after each tapped block).
    """
    if isinstance(body, ResNetTrunk):
        return [[body.conv1, body.bn1]] + [[getattr(body, f"layer{i}")] for i in range(1, 5)]
    if isinstance(body, EfficientNetLiteTrunk):
        stages, start = [[body._conv_stem, body._bn0]], 0
        for tap in body.tap_indices:
            stages.append(list(body._blocks[start : tap + 1]))
            start = tap + 1
        return stages
    raise TypeError(f"unknown trunk layout {type(body).__name__}: cannot freeze its stages")


def freeze_stages(body: nn.Module, freeze_at: int) -> None:
    """Freeze the first ``freeze_at`` stages of a trunk (detectron2 ``FREEZE_AT``: 1 = stem,
    2 = stem + the C2 stage, its default): no gradient, and their BatchNorms fixed."""
    stages = trunk_stages(body)
    if not 0 <= freeze_at <= len(stages):
        raise ValueError(f"freeze_at must be in [0, {len(stages)}], got {freeze_at}")
    frozen = [module for stage in stages[:freeze_at] for module in stage]
    for module in frozen:
        module.requires_grad_(False)
        freeze_batch_norm(module)  # in place inside a container (a ResNet layer, a block)
    for name, child in list(body.named_children()):  # a bare BatchNorm (the stem's) is swapped
        if isinstance(child, nn.BatchNorm2d) and any(child is m for m in frozen):
            setattr(body, name, freeze_batch_norm(child))


def _resnet_trunk(name: str) -> nn.Module:
    block, layers = RESNET_SPECS[name]
    return ResNetTrunk(block=block, layers=layers)


#: Trunks an FPN can sit on (all return C2..C5).
FPN_TRUNKS: dict[str, Callable[[], nn.Module]] = {
    **{name: partial(_resnet_trunk, name) for name in RESNET_SPECS},
    "efficientnet_lite0": EfficientNetLiteTrunk,
    "efficientnet_lite2": partial(EfficientNetLiteTrunk, stages=lite_stages("lite2")),
}


def build_fpn_backbone(
    name: str,
    *,
    init: str | Path | None = None,
    out_channels: int = 256,
    norm: str = "bn",
    freeze_at: int = 0,
    top_block: str | None = "maxpool",
) -> FPNBackbone:
    """Build ``FPN_TRUNKS[name]`` + FPN, load ``init`` into it, then apply ``norm``.

    Args:
        name: a key of ``FPN_TRUNKS`` (``resnet50``, ``resnet101``, ``efficientnet_lite0``...).
        init: ``None``, a local weights file (an ImageNet classifier file loads into ``body``),
            or ``"imagenet"`` for a trunk with locally installed weights (see
            ``deepmac.backbones.IMAGENET_WEIGHTS``).
        out_channels: FPN channels (256 in Mask R-CNN).
        norm: ``"bn"`` (trainable BatchNorm, as the official synchronised-BN models) or
            ``"frozen_bn"`` (statistics and affine fixed after loading ``init``).
        freeze_at: trunk stages left untrained (``freeze_stages``; 0 = train everything, as
            Model Garden; detectron2 freezes 2).
        top_block: see ``FPN``.

    Raises:
        ValueError: unknown ``name`` or ``norm``, or unavailable ``"imagenet"`` weights.
    """
    from deepmac.backbones import IMAGENET_WEIGHTS, load_backbone_weights

    if name not in FPN_TRUNKS:
        raise ValueError(f"unknown FPN trunk {name!r}; valid: {sorted(FPN_TRUNKS)}")
    if norm not in TRUNK_NORMS:
        raise ValueError(f"norm must be one of {TRUNK_NORMS}, got {norm!r}")
    backbone = FPNBackbone(FPN_TRUNKS[name](), out_channels=out_channels, top_block=top_block)
    if init is not None:
        if str(init) == "imagenet":
            finder = IMAGENET_WEIGHTS.get(name)
            path = finder() if finder is not None else None
            if path is None:
                raise ValueError(
                    f"init='imagenet' is not available for {name!r} on this machine "
                    f"(available for {sorted(IMAGENET_WEIGHTS)} with 'deepmac[pretrained]'); "
                    f"pass a local weights file instead"
                )
            init = path
        load_backbone_weights(backbone, init)
    if norm == "frozen_bn":
        freeze_batch_norm(backbone.body)
    if freeze_at:
        freeze_stages(backbone.body, freeze_at)
    return backbone
