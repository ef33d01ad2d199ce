"""Single-stack hourglass mask heads of Deep-MAC (TF ``hourglass_network.py``, [HG]).

Mirrors ``ConvolutionalBlock``, ``ResidualBlock``, ``InputConvBlock``,
``_make_repeated_residual_blocks``, ``EncoderDecoderBlock`` and ``HourglassNetwork`` with
``num_hourglasses=1, initial_downsample=False`` (reference/official-implementation.md §2.2-2.3).
Every BN is Keras ``momentum=0.1, epsilon=1e-5`` (PyTorch ``momentum=0.9``), every conv is
bias-free with a glorot-uniform kernel. The blocks live in ``deepmac.layers.hourglass_blocks``,
shared with the hourglass backbones.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from deepmac.layers.hourglass_blocks import (
    ConvBlock,
    EncoderDecoderBlock,
    ResidualBlock,
)
from deepmac.layers.keras import glorot_uniform_
from deepmac.mask_heads.layers import MaskHead

__all__ = [
    "HOURGLASS_HEADS",
    "ConvBlock",
    "EncoderDecoderBlock",
    "HourglassMaskHead",
    "HourglassNetwork",
    "ResidualBlock",
    "hourglass_depth",
]

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


class HourglassMaskHead(MaskHead):
    """Deep-MAC hourglass mask head: ``HourglassNetwork`` then ``project_out`` (biased 1x1 -> 1).

    Args:
        in_channels: ``C_in`` of the ``(N, C_in, S, S)`` crops (50 in Deep-MAC: 2 coordinate +
            16 pixel-embedding + 32 instance-embedding channels).
        name: one of ``HOURGLASS_HEADS``.
        num_init_channels: ``nc``; stages use ``nc * HOURGLASS_HEADS[name][0]`` channels.

    Forward: ``(N, C_in, S, S) -> (N, 1, S, S)`` logits; ``S`` must be divisible by
    ``2 ** num_stages`` (2/4/8/32/32 for hourglass10/20/32/52/100), as in TF where other sizes
    fail at the Add.
    """

    def __init__(self, in_channels: int, *, name: str, num_init_channels: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hourglass = build_hourglass(name, in_channels, num_init_channels)
        self.size_multiple = self.hourglass.downsample_factor
        self.project_out = glorot_uniform_(nn.Conv2d(self.hourglass.out_channels, 1, 1))

    def forward(self, features: Tensor) -> Tensor:
        """``(N, C_in, S, S) -> (N, 1, S, S)`` mask logits."""
        self.check_input(features)
        return self.project_out(self.hourglass(features))


def _layer_depth(module: nn.Module) -> int:
    if isinstance(module, nn.Sequential):
        return sum(_layer_depth(m) for m in module)
    if isinstance(module, ConvBlock):
        return 1
    if isinstance(module, ResidualBlock):
        return 2
    raise TypeError(f"unexpected layer {type(module).__name__}")


def _encoder_decoder_depth(block: EncoderDecoderBlock) -> int:
    inner = block.inner_block
    inner_depth = (
        _encoder_decoder_depth(inner)
        if isinstance(inner, EncoderDecoderBlock)
        else _layer_depth(inner)
    )
    return _layer_depth(block.encoder_block2) + _layer_depth(block.decoder_block) + inner_depth


def hourglass_depth(network: HourglassNetwork | HourglassMaskHead) -> int:
    """[HG] ``hourglass_depth``: convs on the main path (skip branches and project_out excluded).

    3 input convs + encoder_block2/inner/decoder convs of every stage + 1 output conv; gives
    10/20/32/52/100 for the hourglass heads.
    """
    if isinstance(network, HourglassMaskHead):
        network = network.hourglass
    return 3 + _encoder_decoder_depth(network.encoder_decoder) + 1
