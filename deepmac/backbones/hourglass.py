"""Stacked hourglass backbones of CenterNet (TF ``hourglass_network.py`` ``HourglassNetwork``).

``hourglass104`` is the Deep-MAC backbone ([HG] ``hourglass_104``, reference/
official-implementation.md §4.5): a x4 input downsampling block, then two 5-stage hourglasses
with channels ``[256, 256, 384, 384, 384, 512]`` and blocks ``[2, 2, 2, 2, 2, 4]``, joined by the
inter-stack connection of §2.2. It returns both stack outputs (§1.2).

``hourglass52`` is the backbone of the paper's Table 7: "HG-104 [...] is a stack of two hourglass
modules each with 52 layers", compared against "an HG-52 backbone". We therefore build it as ONE
stack of HG104 at the same widths (256-channel output). This is deliberately not [HGFE]'s
``hourglass_52`` (``nc=64``, channels ``[128, 128, 192, 192, 192, 256]``), a much narrower
CenterNet detector backbone that is not what Table 7 compares; pass ``input_channels=64,
channel_dims=(128, 128, 192, 192, 192, 256)`` to ``HourglassBackbone`` to get that one.

The building blocks are the mask-head ones (``deepmac.mask_heads.hourglass``): same TF code,
Keras BN (momentum 0.1 -> PyTorch 0.9, eps 1e-5), bias-free convs, glorot-uniform init.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.backbones.base import Backbone
from deepmac.layers.hourglass_blocks import ConvBlock, EncoderDecoderBlock, ResidualBlock

__all__ = ["HOURGLASS_BACKBONES", "HourglassBackbone", "build_hourglass_backbone"]

# name -> (input_channels, channel_dims, blocks_per_stage, num_hourglasses); see module docstring.
HOURGLASS_BACKBONES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], int]] = {
    "hourglass104": (128, (256, 256, 384, 384, 384, 512), (2, 2, 2, 2, 2, 4), 2),
    "hourglass52": (128, (256, 256, 384, 384, 384, 512), (2, 2, 2, 2, 2, 4), 1),
}


class HourglassBackbone(Backbone):
    """[HG] ``HourglassNetwork(initial_downsample=True)``: stacked hourglasses at stride 4.

    ``InputDownsampleBlock`` (7x7/2 conv to ``input_channels``, then a stride-2 residual block to
    ``channel_dims[0]``), then per stack ``EncoderDecoderBlock -> output_conv`` (3x3 conv-BN-ReLU).
    Between stacks: ``next = ResidualBlock(relu(BN(conv1x1(inputs)) + BN(conv1x1(output))))``.

    Args:
        input_channels: channels of the 7x7 input conv (128 for HG104).
        channel_dims: per-stage channels; ``len - 1`` stages of x2 downsampling.
        blocks_per_stage: residual blocks per stage (same length as ``channel_dims``).
        num_hourglasses: number of stacks = ``num_outputs``.

    Forward: ``(B, 3, H, W) -> [(B, channel_dims[0], H / 4, W / 4)] * num_hourglasses``;
    ``H, W`` must be multiples of ``4 * 2 ** num_stages`` (128 for 5 stages), because every stage
    halves the map and the decoder's x2 upsample must land on the encoder's size for the Add.
    """

    def __init__(
        self,
        *,
        input_channels: int,
        channel_dims: Sequence[int],
        blocks_per_stage: Sequence[int],
        num_hourglasses: int,
    ) -> None:
        super().__init__()
        if len(channel_dims) != len(blocks_per_stage) or len(channel_dims) < 2:
            raise ValueError(
                f"need >= 2 stages with one block count each, got "
                f"channel_dims={tuple(channel_dims)}, blocks_per_stage={tuple(blocks_per_stage)}"
            )
        if num_hourglasses < 1:
            raise ValueError(f"num_hourglasses must be >= 1, got {num_hourglasses}")
        width = channel_dims[0]
        self.out_channels = width
        self.num_outputs = num_hourglasses
        self.num_stages = len(channel_dims) - 1
        self.size_multiple = self.stride * 2**self.num_stages

        # InputDownsampleBlock.
        self.input_conv = ConvBlock(3, input_channels, kernel_size=7, stride=2)
        self.input_residual = ResidualBlock(input_channels, width, stride=2, skip_conv=True)

        self.hourglasses = nn.ModuleList(
            EncoderDecoderBlock(channel_dims, blocks_per_stage) for _ in range(num_hourglasses)
        )
        self.output_convs = nn.ModuleList(ConvBlock(width, width) for _ in range(num_hourglasses))
        # Inter-stack connection (intermediate_conv1/conv2/residual in TF): 1x1 conv + BN, no ReLU.
        num_links = num_hourglasses - 1
        self.inter_input_convs = nn.ModuleList(
            ConvBlock(width, width, kernel_size=1, relu=False) for _ in range(num_links)
        )
        self.inter_output_convs = nn.ModuleList(
            ConvBlock(width, width, kernel_size=1, relu=False) for _ in range(num_links)
        )
        self.inter_residuals = nn.ModuleList(ResidualBlock(width, width) for _ in range(num_links))

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised images -> ``num_outputs`` maps ``(B, C_out, H/4, W/4)``."""
        self.check_images(images)
        inputs = self.input_residual(self.input_conv(images))  # (B, C_out, H/4, W/4)
        outputs: list[Tensor] = []
        for i, (hourglass, output_conv) in enumerate(
            zip(self.hourglasses, self.output_convs, strict=True)
        ):
            output = output_conv(hourglass(inputs))
            outputs.append(output)
            if i < len(self.inter_residuals):
                merged = self.inter_input_convs[i](inputs) + self.inter_output_convs[i](output)
                inputs = self.inter_residuals[i](F.relu(merged))
        return outputs


def build_hourglass_backbone(name: str, **overrides: object) -> HourglassBackbone:
    """Build ``name`` (a key of ``HOURGLASS_BACKBONES``); ``overrides`` replace table entries.

    Args:
        name: ``"hourglass104"`` or ``"hourglass52"``.
        **overrides: any ``HourglassBackbone`` keyword (e.g. narrower ``channel_dims`` in tests).
    """
    input_channels, channel_dims, blocks, num_hourglasses = HOURGLASS_BACKBONES[name]
    kwargs: dict[str, object] = {
        "input_channels": input_channels,
        "channel_dims": channel_dims,
        "blocks_per_stage": blocks,
        "num_hourglasses": num_hourglasses,
    }
    unknown = set(overrides) - set(kwargs)
    if unknown:
        raise TypeError(
            f"{name} got unexpected arguments {sorted(unknown)}; valid: {sorted(kwargs)}"
        )
    kwargs.update(overrides)
    return HourglassBackbone(**kwargs)  # type: ignore[arg-type]
