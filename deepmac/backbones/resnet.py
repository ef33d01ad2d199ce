"""ImageNet ResNet-18/34/50/101 trunks (He et al., 2016) with the FPN-lite neck to stride 4.

Module names follow torchvision's ``resnet.py`` (``conv1``, ``bn1``, ``layer1..4``,
``downsample.0/1``; v1.5: the stride sits on the 3x3 conv of the bottleneck), so a torchvision
ImageNet ``state_dict`` saved to a file loads with ``--init`` (its ``fc.*`` keys are reported as
unexpected). torchvision itself is never imported. Those weights expect RGB inputs normalised
with the ImageNet mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from deepmac.backbones.base import Backbone
from deepmac.backbones.neck import TrunkWithNeck

__all__ = ["RESNET_SPECS", "BasicBlock", "Bottleneck", "ResNetBackbone", "ResNetTrunk"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN with a post-activation Add; ``(B, C_in, H, W) -> (B, C, H/s, W/s)``."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, C, H / stride, W / stride)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 x4 bottleneck; ``(B, C_in, H, W) -> (B, 4 C, H/s, W/s)``."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, *, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, 4 C, H / stride, W / stride)``."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


# name -> (block type, blocks per layer), as in torchvision / He et al. Table 1.
RESNET_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),  # Deep-MARC R-101-FPN (deepmac.backbones.fpn)
}


class ResNetTrunk(nn.Module):
    """ResNet without ``avgpool``/``fc``; returns ``C2..C5`` at strides 4, 8, 16, 32.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in ``layer1..layer4``.

    Attributes:
        out_channels: channels of ``(C2, C3, C4, C5)``.
    """

    def __init__(
        self, *, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int]
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        in_channels = 64
        out_channels = []
        for i, (channels, num_blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(num_blocks):
                blocks.append(block(in_channels, channels, stride=stride if j == 0 else 1))
                in_channels = channels * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            out_channels.append(in_channels)
        self.out_channels = tuple(out_channels)
        for m in self.modules():  # torchvision's init: He normal (fan_out), BN gamma 1 beta 0.
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W) -> [C2 (B, c2, H/4, W/4), C3, C4, C5 (B, c5, H/32, W/32)]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


class ResNetBackbone(TrunkWithNeck, Backbone):
    """ResNet trunk (``body``) + FPN-lite neck (``neck``): one stride-4 map.

    Args:
        name: a key of ``RESNET_SPECS``.
        out_channels: ``C_out`` of the stride-4 map.
        neck_widths: see ``FPNLiteNeck``.

    Forward: ``(B, 3, H, W) -> [(B, out_channels, H / 4, W / 4)]``, ``H, W`` multiples of 32.
    """

    def __init__(
        self, name: str, *, out_channels: int, neck_widths: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        block, layers = RESNET_SPECS[name]
        self.body = ResNetTrunk(block=block, layers=layers)
        self._attach_neck(out_channels, neck_widths)
