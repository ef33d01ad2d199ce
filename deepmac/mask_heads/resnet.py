"""ResNet mask heads of Deep-MAC (TF ``ResNetMaskNetwork``) and the dilated ResNet-20 of Table 6.

The block is the OD API's ``resnet_v1.block_basic``, a Keras-applications "v2-like" block
(reference/official-implementation.md §2.4, §8.17), *not* the hourglass residual block:

    pre = relu(BN(x))
    sc  = conv1x1(pre, with bias) if conv_shortcut else x
    r   = relu(BN(conv3x3(pre)))            # bias-free
    r   = relu(BN(conv3x3(r)))              # bias-free; ReLU *before* the add
    out = sc + r                            # nothing after the add

BN is plain Keras BN: ``momentum=0.99`` (PyTorch 0.01), ``epsilon=1.001e-5``. No block is
strided (``stack_basic(..., stride1=1)``), so the head works at the crop resolution throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.mask_heads.layers import MaskHead, glorot_uniform_, keras_batch_norm

__all__ = ["RESNET_HEAD_STAGES", "KerasBasicBlock", "ResNetMaskHead", "dilated_conv_indices"]

# resnet_type -> (channel multipliers of nc per stack, blocks per stack), from ResNetMaskNetwork.
RESNET_HEAD_STAGES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "resnet4": ((2,), (2,)),
    "resnet8": ((2,), (4,)),
    "resnet12": ((2,), (6,)),
    "resnet16": ((2,), (8,)),
    # "Defined such that the channels are roughly similar to the hourglass20."
    "resnet20": ((2, 3), (8, 2)),
}

# keras.applications ResNet BN: epsilon=1.001e-5, Keras default momentum 0.99.
RESNET_BN_EPS = 1.001e-5
RESNET_BN_KERAS_MOMENTUM = 0.99


def _resnet_bn(channels: int) -> nn.BatchNorm2d:
    return keras_batch_norm(channels, keras_momentum=RESNET_BN_KERAS_MOMENTUM, eps=RESNET_BN_EPS)


def _conv3x3(in_channels: int, out_channels: int, dilation: int) -> nn.Conv2d:
    # ZeroPadding2D(1) + 'valid' conv in TF; padding=dilation keeps S for the dilated variant.
    return glorot_uniform_(
        nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
    )


class KerasBasicBlock(nn.Module):
    """``resnet_v1.block_basic`` with stride 1 (optionally dilated 3x3 convs for Table 6).

    Args:
        in_channels: input channels ``C_in``.
        filters: output channels.
        conv_shortcut: biased 1x1 conv on the pre-activated input instead of the identity.
        dilations: dilation rate of the two 3x3 convs (``(1, 1)`` in the official heads).
    """

    _fuse_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(
        self,
        in_channels: int,
        filters: int,
        *,
        conv_shortcut: bool,
        dilations: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        if not conv_shortcut and in_channels != filters:
            raise ValueError(
                f"identity shortcut needs equal channels, got {in_channels}->{filters}"
            )
        self.preact_bn = _resnet_bn(in_channels)
        self.shortcut = (
            glorot_uniform_(nn.Conv2d(in_channels, filters, 1)) if conv_shortcut else None
        )
        self.conv1 = _conv3x3(in_channels, filters, dilations[0])
        self.bn1 = _resnet_bn(filters)
        self.conv2 = _conv3x3(filters, filters, dilations[1])
        self.bn2 = _resnet_bn(filters)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, filters, H, W)``."""
        pre = F.relu(self.preact_bn(x), inplace=True)
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        r = F.relu(self.bn1(self.conv1(pre)), inplace=True)
        r = F.relu(self.bn2(self.conv2(r)), inplace=True)
        return shortcut + r


def dilated_conv_indices(num_dilated: int, num_convs: int) -> frozenset[int]:
    """Which of the ``num_convs`` 3x3 convs (main-path order) become rate-2 dilated.

    Table 6 only says how many convs of ResNet-20 are dilated (0, 10 or 20). We spread them
    evenly: ``k`` dilated convs are the ones at positions ``round((j + 1) * n / k) - 1``, so 10 of
    20 means the second conv of every block and 20 means all of them.
    """
    if not 0 <= num_dilated <= num_convs:
        raise ValueError(f"num_dilated must be in [0, {num_convs}], got {num_dilated}")
    return frozenset(round((j + 1) * num_convs / num_dilated) - 1 for j in range(num_dilated))


class ResNetMaskHead(MaskHead):
    """Deep-MAC ``ResNetMaskNetwork`` + ``project_out``.

    ``conv1x1(C_in -> nc, with bias)`` -> one ``stack_basic`` per stage (block 1 with a conv
    shortcut, the rest identity) -> ``project_out`` (biased 1x1 -> 1 logit).

    Args:
        in_channels: ``C_in`` of the ``(N, C_in, S, S)`` crops.
        stage_channels: output channels of each stack (``(128,)`` for resnet4..16 at nc=64).
        stage_blocks: blocks per stack (2 convs per block).
        num_init_channels: ``nc``, width of the input 1x1 conv.
        num_dilated: how many 3x3 convs use dilation 2 (Table 6; 0 in the official heads); the
            parameter count does not change.

    Forward: ``(N, C_in, S, S) -> (N, 1, S, S)`` logits, any ``S``.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        stage_channels: Sequence[int],
        stage_blocks: Sequence[int],
        num_init_channels: int = 64,
        num_dilated: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_layer = glorot_uniform_(nn.Conv2d(in_channels, num_init_channels, 1))
        num_convs = 2 * sum(stage_blocks)
        dilated = dilated_conv_indices(num_dilated, num_convs)
        blocks: list[nn.Module] = []
        channels, conv_index = num_init_channels, 0
        for filters, num_blocks in zip(stage_channels, stage_blocks, strict=True):
            if num_blocks < 2:
                # stack_basic always builds a first and a last block.
                raise ValueError(f"stack_basic needs >= 2 blocks, got {num_blocks}")
            for i in range(num_blocks):
                rates = (1 + (conv_index in dilated), 1 + (conv_index + 1 in dilated))
                blocks.append(
                    KerasBasicBlock(channels, filters, conv_shortcut=i == 0, dilations=rates)
                )
                channels, conv_index = filters, conv_index + 2
        self.blocks = nn.Sequential(*blocks)
        self.project_out = glorot_uniform_(nn.Conv2d(channels, 1, 1))

    def forward(self, features: Tensor) -> Tensor:
        """``(N, C_in, S, S) -> (N, 1, S, S)`` mask logits."""
        self.check_input(features)
        return self.project_out(self.blocks(self.input_layer(features)))


def build_resnet_head(
    name: str, in_channels: int, num_init_channels: int, num_dilated: int = 0
) -> ResNetMaskHead:
    """``ResNetMaskHead`` for a ``RESNET_HEAD_STAGES`` name (``num_dilated`` for Table 6)."""
    mults, blocks = RESNET_HEAD_STAGES[name]
    return ResNetMaskHead(
        in_channels,
        stage_channels=[m * num_init_channels for m in mults],
        stage_blocks=blocks,
        num_init_channels=num_init_channels,
        num_dilated=num_dilated,
    )
