"""ResNet *bottleneck* mask heads of the paper's Sec. 6 / Fig. 3 (absent from the official code).

What the paper states: the Deep-MAC study uses "Resnets (basic and bottleneck variants), with
varying depth" and "ResNet bottleneck [1/4th], a variant of the ResNet (bottleneck) mask-head
with 4x fewer channels"; the first layer has 64 channels, widths grow in deeper layers, and
"the number of convolutions of each dimensionality [is] roughly similar between mask-heads of
similar depth". Its appendix table of widths is not in our reference, so the rest is our choice:

* Same skeleton as the official ``ResNetMaskNetwork`` (biased 1x1 input conv to nc, stacks with
  the same block counts and widths as resnet4/8/12/16/20, no down-sampling, ``project_out``).
* The block is the bottleneck counterpart of the official Keras-style basic block,
  ``keras.applications.resnet.block2`` (ResNet-v2 bottleneck) at stride 1:
  ``pre = relu(BN(x)); sc = conv1x1(pre, bias) or x; r = relu(BN(conv1x1(pre)));
  r = relu(BN(conv3x3(r))); out = sc + conv1x1_expand(r, bias)`` with expansion 4. BN is Keras
  default (momentum 0.99, eps 1.001e-5), kernels glorot-uniform, biases zero.
* The registry names count the convs of the blocks (3 per block): ``bottleneck_resnet{6,12,18,
  24,30}`` mirror resnet{4,8,12,16,20}. Full width: bottleneck width 2nc (3nc in resnet20's second
  stack), output 4x that. ``[1/4]``: all widths divided by 4, so the blocks output the same 2nc /
  3nc channels as the basic heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.mask_heads.layers import MaskHead, glorot_uniform_, keras_batch_norm
from deepmac.mask_heads.resnet import RESNET_BN_EPS, RESNET_BN_KERAS_MOMENTUM, RESNET_HEAD_STAGES

__all__ = ["BOTTLENECK_HEADS", "BottleneckMaskHead", "KerasBottleneckBlock"]

EXPANSION = 4

# registry name -> (basic counterpart in RESNET_HEAD_STAGES, width divisor); the name counts the
# 3 convs of every block.
BOTTLENECK_HEADS: dict[str, tuple[str, int]] = {
    f"{prefix}{3 * sum(blocks)}": (basic, divisor)
    for prefix, divisor in (("bottleneck_resnet", 1), ("bottleneck_quarter_resnet", 4))
    for basic, (_, blocks) in RESNET_HEAD_STAGES.items()
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return keras_batch_norm(channels, keras_momentum=RESNET_BN_KERAS_MOMENTUM, eps=RESNET_BN_EPS)


class KerasBottleneckBlock(nn.Module):
    """``keras.applications.resnet.block2`` (pre-activation bottleneck) at stride 1.

    Args:
        in_channels: input channels.
        width: bottleneck width ``f``; the block outputs ``4 f`` channels.
        conv_shortcut: biased 1x1 conv on the pre-activated input instead of the identity.
    """

    _fuse_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, in_channels: int, width: int, *, conv_shortcut: bool) -> None:
        super().__init__()
        out_channels = EXPANSION * width
        if not conv_shortcut and in_channels != out_channels:
            raise ValueError(
                f"identity shortcut needs equal channels, got {in_channels}->{out_channels}"
            )
        self.preact_bn = _bn(in_channels)
        self.shortcut = (
            glorot_uniform_(nn.Conv2d(in_channels, out_channels, 1)) if conv_shortcut else None
        )
        self.conv1 = glorot_uniform_(nn.Conv2d(in_channels, width, 1, bias=False))
        self.bn1 = _bn(width)
        self.conv2 = glorot_uniform_(nn.Conv2d(width, width, 3, padding=1, bias=False))
        self.bn2 = _bn(width)
        self.conv3 = glorot_uniform_(nn.Conv2d(width, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, 4 * width, H, W)``."""
        pre = F.relu(self.preact_bn(x), inplace=True)
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        r = F.relu(self.bn1(self.conv1(pre)), inplace=True)
        r = F.relu(self.bn2(self.conv2(r)), inplace=True)
        return shortcut + self.conv3(r)


class BottleneckMaskHead(MaskHead):
    """Bottleneck ResNet mask head (see the module docstring for what is the paper's and ours).

    Args:
        in_channels: ``C_in`` of the ``(N, C_in, S, S)`` crops.
        stage_widths: bottleneck width of each stack (blocks output ``4 x`` that).
        stage_blocks: blocks per stack (3 convs per block).
        num_init_channels: ``nc``, width of the biased 1x1 input conv.

    Forward: ``(N, C_in, S, S) -> (N, 1, S, S)`` logits, any ``S``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        stage_widths: Sequence[int],
        stage_blocks: Sequence[int],
        num_init_channels: int = 64,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_layer = glorot_uniform_(nn.Conv2d(in_channels, num_init_channels, 1))
        blocks: list[nn.Module] = []
        channels = num_init_channels
        for width, num_blocks in zip(stage_widths, stage_blocks, strict=True):
            for i in range(num_blocks):
                blocks.append(KerasBottleneckBlock(channels, width, conv_shortcut=i == 0))
                channels = EXPANSION * width
        self.blocks = nn.Sequential(*blocks)
        self.project_out = glorot_uniform_(nn.Conv2d(channels, 1, 1))

    def forward(self, features: Tensor) -> Tensor:
        """``(N, C_in, S, S) -> (N, 1, S, S)`` mask logits."""
        self.check_input(features)
        return self.project_out(self.blocks(self.input_layer(features)))


def build_bottleneck_head(
    name: str, in_channels: int, num_init_channels: int
) -> BottleneckMaskHead:
    """``BottleneckMaskHead`` for a ``BOTTLENECK_HEADS`` name."""
    basic, divisor = BOTTLENECK_HEADS[name]
    mults, blocks = RESNET_HEAD_STAGES[basic]
    widths = [m * num_init_channels // divisor for m in mults]
    if any(w < 1 for w in widths):
        raise ValueError(f"num_init_channels={num_init_channels} is too small for {name}")
    return BottleneckMaskHead(
        in_channels, stage_widths=widths, stage_blocks=blocks, num_init_channels=num_init_channels
    )
