"""The hourglass building blocks of TF ``hourglass_network.py`` ([HG]), shared by the
Hourglass-104/52 backbones and the hourglass mask heads: ``ConvBlock``, ``ResidualBlock``,
``residual_stack`` and the recursive ``EncoderDecoderBlock``. Every BN is Keras
``momentum=0.1, epsilon=1e-5`` (PyTorch ``momentum=0.9``), every conv bias-free with a
glorot-uniform kernel (reference/official-implementation.md §2.2-2.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.layers.keras import (
    HG_BN_EPS,
    HG_BN_KERAS_MOMENTUM,
    glorot_uniform_,
    keras_batch_norm,
)

__all__ = ["ConvBlock", "EncoderDecoderBlock", "ResidualBlock", "residual_stack"]


def _hg_bn(channels: int) -> nn.BatchNorm2d:
    return keras_batch_norm(channels, keras_momentum=HG_BN_KERAS_MOMENTUM, eps=HG_BN_EPS)


class ConvBlock(nn.Module):
    """``ConvolutionalBlock``: conv k x k (stride, bias-free) -> BN -> optional ReLU.

    TF pads k = 3 symmetrically by 1 then runs a 'valid' conv, and runs k = 1 convs 'same'
    (no padding), so ``padding=k // 2`` is exact, also for stride 2 (§8.20).
    """

    _fuse_pairs = (("conv", "norm"),)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = glorot_uniform_(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
            )
        )
        self.norm = _hg_bn(out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)``."""
        x = self.norm(self.conv(x))
        return F.relu(x, inplace=True) if self.relu else x


class ResidualBlock(nn.Module):
    """[HG] ``ResidualBlock``: ``relu(BN(conv3x3(ConvBlock_stride(x))) + skip(x))``.

    ``skip`` is the identity or a ``SkipConvolution`` (1x1 conv with the block's stride, BN, no
    ReLU). A post-activation basic block; not the Keras-v2-like block of the ResNet heads.
    """

    _fuse_pairs = (("conv", "norm"),)

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, skip_conv: bool = False
    ) -> None:
        super().__init__()
        if not skip_conv and (stride != 1 or in_channels != out_channels):
            # TF would fail at the Add; the hourglass tables never build this.
            raise ValueError(
                f"identity skip needs stride 1 and equal channels, got "
                f"stride={stride}, {in_channels}->{out_channels}"
            )
        self.conv_block = ConvBlock(in_channels, out_channels, stride=stride)
        self.conv = glorot_uniform_(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False))
        self.norm = _hg_bn(out_channels)
        self.skip = (
            ConvBlock(in_channels, out_channels, kernel_size=1, stride=stride, relu=False)
            if skip_conv
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)``."""
        net = self.norm(self.conv(self.conv_block(x)))
        skip = x if self.skip is None else self.skip(x)
        return F.relu(net + skip, inplace=True)


def residual_stack(
    in_channels: int,
    out_channels: int,
    num_blocks: int,
    *,
    initial_stride: int = 1,
    residual_channels: int | None = None,
    initial_skip_conv: bool = False,
) -> nn.Sequential:
    """``_make_repeated_residual_blocks``: ``num_blocks`` residual blocks, stride on block 0.

    The first ``num_blocks - 1`` blocks output ``residual_channels``; the last outputs
    ``out_channels`` and uses a conv skip iff the channels change (or, when it is the only block,
    iff it is strided). ``initial_skip_conv`` only affects a first block that is not the last,
    exactly as in TF.
    """
    residual_channels = out_channels if residual_channels is None else residual_channels
    blocks: list[nn.Module] = []
    channels = in_channels
    for i in range(num_blocks - 1):
        stride = initial_stride if i == 0 else 1
        skip_conv = stride > 1 or (i == 0 and initial_skip_conv)
        blocks.append(
            ResidualBlock(channels, residual_channels, stride=stride, skip_conv=skip_conv)
        )
        channels = residual_channels
    if num_blocks == 1:
        stride, skip_conv = initial_stride, initial_stride > 1
    else:
        stride, skip_conv = 1, residual_channels != out_channels
    blocks.append(ResidualBlock(channels, out_channels, stride=stride, skip_conv=skip_conv))
    return nn.Sequential(*blocks)


class EncoderDecoderBlock(nn.Module):
    """One recursive hourglass stage ([HG] ``EncoderDecoderBlock``).

    ``out = encoder_block1(x) + upsample(decoder(inner(encoder_block2(x))))``: ``encoder_block2``
    halves the resolution (unless ``stagewise_downsample=False``), the decoder runs at the *low*
    resolution before the nearest x2 upsample (§8.16). Without ``encoder_decoder_shortcut`` the
    ``encoder_block1`` branch and the Add are absent.
    """

    def __init__(
        self,
        channel_dims: Sequence[int],
        blocks_per_stage: Sequence[int],
        *,
        stagewise_downsample: bool = True,
        encoder_decoder_shortcut: bool = True,
    ) -> None:
        super().__init__()
        c0, c1 = channel_dims[0], channel_dims[1]
        nblocks = blocks_per_stage[0]
        self.stride = 2 if stagewise_downsample else 1
        self.encoder_block1 = residual_stack(c0, c0, nblocks) if encoder_decoder_shortcut else None
        self.encoder_block2 = residual_stack(
            c0, c1, nblocks, initial_stride=self.stride, initial_skip_conv=c0 != c1
        )
        if len(channel_dims) > 2:
            self.inner_block: nn.Module = EncoderDecoderBlock(
                channel_dims[1:],
                blocks_per_stage[1:],
                stagewise_downsample=stagewise_downsample,
                encoder_decoder_shortcut=encoder_decoder_shortcut,
            )
        else:
            self.inner_block = residual_stack(c1, c1, blocks_per_stage[1])
        self.decoder_block = residual_stack(c1, c0, nblocks, residual_channels=c1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, c0, H, W) -> (N, c0, H, W)``; H, W divisible by ``2 ** num_stages``."""
        low = self.decoder_block(self.inner_block(self.encoder_block2(x)))
        if self.stride > 1:
            low = F.interpolate(low, scale_factor=self.stride, mode="nearest")  # UpSampling2D
        if self.encoder_block1 is None:
            return low
        return self.encoder_block1(x) + low
