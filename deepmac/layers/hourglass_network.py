"""The single-stack hourglass network of Deep-MAC's mask heads (TF ``hourglass_network.py``,
[HG] ``HourglassNetwork`` with ``num_hourglasses=1, initial_downsample=False``) and the
``hourglass_*`` factories that size it (reference/official-implementation.md §2.2-2.3).

A layer, not a head: the hourglass mask heads put a 1x1 projection after it, Deep-MARC's
hourglass head an upsampling, and ``efficientnet_lite0_hourglass20`` (Table 7 at CPU scale)
runs it on the whole backbone map.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from deepmac.layers.hourglass_blocks import ConvBlock, EncoderDecoderBlock, ResidualBlock

__all__ = ["HOURGLASS_HEADS", "HourglassNetwork", "build_hourglass"]

# (channel multipliers of nc per stage, blocks per stage, stagewise_downsample, shortcut),
# from hourglass_10/20/32/52/100, hourglass_20_uniform_size and hourglass_20_no_shortcut in [HG].
HOURGLASS_HEADS: dict[str, tuple[tuple[int, ...], tuple[int, ...], bool, bool]] = {
    "hourglass10": ((2, 2), (1, 1), True, True),
    "hourglass20": ((2, 2, 3), (1, 2, 2), True, True),
    "hourglass32": ((2, 2, 3, 3), (2, 2, 2, 2), True, True),
    "hourglass52": ((2, 2, 3, 3, 3, 4), (2, 2, 2, 2, 2, 4), True, True),
    "hourglass100": ((2, 2, 3, 3, 3, 4), (4, 4, 4, 4, 4, 8), True, True),
    "hourglass20_uniform_size": ((2, 2, 3), (1, 2, 2), False, True),
    "hourglass20_no_shortcut": ((2, 2, 3), (1, 2, 2), True, False),
}


class HourglassNetwork(nn.Module):
    """Single-stack ``HourglassNetwork(initial_downsample=False)``; returns the last output.

    ``InputConvBlock`` (3x3 conv to ``input_channels`` + residual block to ``channel_dims[0]``
    with a conv skip) -> ``EncoderDecoderBlock`` -> ``output_conv`` (3x3 conv-BN-ReLU).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        input_channels: int,
        channel_dims: Sequence[int],
        blocks_per_stage: Sequence[int],
        stagewise_downsample: bool = True,
        encoder_decoder_shortcut: bool = True,
    ) -> None:
        super().__init__()
        if len(channel_dims) != len(blocks_per_stage) or len(channel_dims) < 2:
            raise ValueError(
                f"need >= 2 stages with one block count each, got "
                f"channel_dims={channel_dims}, blocks_per_stage={blocks_per_stage}"
            )
        self.num_stages = len(channel_dims) - 1
        self.out_channels = channel_dims[0]
        self.downsample_factor = 2**self.num_stages if stagewise_downsample else 1
        self.input_conv = ConvBlock(in_channels, input_channels)
        self.input_residual = ResidualBlock(input_channels, channel_dims[0], skip_conv=True)
        self.encoder_decoder = EncoderDecoderBlock(
            channel_dims,
            blocks_per_stage,
            stagewise_downsample=stagewise_downsample,
            encoder_decoder_shortcut=encoder_decoder_shortcut,
        )
        self.output_conv = ConvBlock(channel_dims[0], channel_dims[0])

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, S, S) -> (N, channel_dims[0], S, S)``."""
        x = self.input_residual(self.input_conv(x))
        return self.output_conv(self.encoder_decoder(x))


def build_hourglass(name: str, in_channels: int, num_init_channels: int) -> HourglassNetwork:
    """The [HG] ``hourglass_*`` factory for ``name`` (a key of ``HOURGLASS_HEADS``)."""
    mults, blocks, stagewise, shortcut = HOURGLASS_HEADS[name]
    return HourglassNetwork(
        in_channels,
        input_channels=num_init_channels,
        channel_dims=[m * num_init_channels for m in mults],
        blocks_per_stage=blocks,
        stagewise_downsample=stagewise,
        encoder_decoder_shortcut=shortcut,
    )
