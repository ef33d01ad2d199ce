"""Single-stack hourglass mask heads of Deep-MAC (TF ``hourglass_network.py``, [HG]).

A head is the single-stack ``HourglassNetwork`` of ``deepmac.layers.hourglass_network`` (TF
``ConvolutionalBlock``, ``ResidualBlock``, ``InputConvBlock``, ``EncoderDecoderBlock`` with
``num_hourglasses=1, initial_downsample=False``; reference/official-implementation.md
§2.2-2.3) and a 1x1 projection to one logit. Every BN is Keras ``momentum=0.1, epsilon=1e-5``
(PyTorch ``momentum=0.9``), every conv is bias-free with a glorot-uniform kernel. The network
and its blocks live in ``deepmac.layers``, shared with the hourglass backbones.
"""

from __future__ import annotations

from torch import Tensor, nn

from deepmac.layers.hourglass_blocks import (
    ConvBlock,
    EncoderDecoderBlock,
    ResidualBlock,
)
from deepmac.layers.hourglass_network import HOURGLASS_HEADS, HourglassNetwork, build_hourglass
from deepmac.layers.keras import glorot_uniform_
from deepmac.mask_heads.layers import MaskHead

__all__ = [
    "HOURGLASS_HEADS",
    "ConvBlock",
    "EncoderDecoderBlock",
    "HourglassMaskHead",
    "HourglassNetwork",
    "ResidualBlock",
    "build_hourglass",
    "hourglass_depth",
]


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
