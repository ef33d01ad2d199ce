"""Deep-MARC mask heads: Model Garden ``DeepMaskHead`` (official/projects/deepmac_maskrcnn, §5.1).

``convnet -> Conv2DTranspose(num_filters, k = s = upsample_factor) -> BN -> ReLU -> 1x1 -> 1``,
class-agnostic (``class_agnostic: true`` in every paper yaml). ``convnet`` is

* ``default``: ``num_convs`` x [3x3 conv(num_filters, with bias) -> BN -> ReLU] (Mask R-CNN's
  4 x 256 head);
* ``hourglassXX``: ``hourglass_XX(num_filters, initial_downsample=False)`` of the forked [HG],
  last output (``2 * num_filters`` channels), with the hourglass BN (Keras 0.1 / 1e-5).

The head's own convs/deconv use ``VarianceScaling(2, fan_out, untruncated_normal)`` kernels and
zero biases; its BNs use ``norm_momentum=0.99, norm_epsilon=1e-3`` (PyTorch momentum 0.01), not
synced (``use_sync_bn`` is not forwarded). Masks come out ``upsample_factor`` x the RoI crop:
14 -> 28 (default yaml), 16 -> 32 or 32 -> 64 (hourglass yamls / tests).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.mask_heads.hourglass import build_hourglass
from deepmac.mask_heads.layers import MaskHead, keras_batch_norm, variance_scaling_fan_out_

__all__ = ["DEEPMARC_VARIANTS", "DeepMaskHead", "MarcConvBlock", "default_mask_convs"]

DEEPMARC_VARIANTS = ("default", "hourglass20", "hourglass52", "hourglass100")

# DeepMaskHead defaults: norm_momentum=0.99, norm_epsilon=0.001.
MARC_BN_EPS = 1e-3
MARC_BN_KERAS_MOMENTUM = 0.99


def _marc_bn(channels: int) -> nn.BatchNorm2d:
    return keras_batch_norm(channels, keras_momentum=MARC_BN_KERAS_MOMENTUM, eps=MARC_BN_EPS)


class MarcConvBlock(nn.Module):
    """One ``default``-variant layer: 3x3 'same' conv with bias -> BN -> ReLU."""

    _fuse_pairs = (("conv", "norm"),)

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = variance_scaling_fan_out_(nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.norm = _marc_bn(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, S, S) -> (N, C_out, S, S)``."""
        return F.relu(self.norm(self.conv(x)), inplace=True)


def default_mask_convs(
    in_channels: int, *, num_filters: int = 256, num_convs: int = 4
) -> nn.Sequential:
    """The ``default`` convnet variant: ``num_convs`` x ``MarcConvBlock(num_filters)``."""
    return nn.Sequential(
        *(
            MarcConvBlock(in_channels if i == 0 else num_filters, num_filters)
            for i in range(num_convs)
        )
    )


class DeepMaskHead(MaskHead):
    """Model Garden ``DeepMaskHead`` (class-agnostic).

    Args:
        in_channels: RoI feature channels (256 for an FPN).
        convnet_variant: one of ``DEEPMARC_VARIANTS``.
        num_filters: Model Garden ``num_filters`` (256 for ``default``, 64 in the hourglass
            yamls); it is the hourglass ``num_channels`` and the deconv width.
        num_convs: convs of the ``default`` variant.
        upsample_factor: deconv kernel and stride; masks are ``upsample_factor * S``.

    Forward: ``(N, C_in, S, S) -> (N, 1, f S, f S)`` logits; hourglass52/100 need ``S % 32 == 0``
    and hourglass20 ``S % 4 == 0`` (TF fails at the Add for other sizes, e.g. hourglass52 at 16).
    """

    _fuse_pairs = (("deconv", "deconv_bn"),)

    def __init__(
        self,
        in_channels: int,
        *,
        convnet_variant: str = "default",
        num_filters: int = 256,
        num_convs: int = 4,
        upsample_factor: int = 2,
    ) -> None:
        super().__init__()
        if convnet_variant not in DEEPMARC_VARIANTS:
            raise ValueError(
                f"unknown convnet_variant {convnet_variant!r}; "
                f"valid: {', '.join(DEEPMARC_VARIANTS)}"
            )
        if upsample_factor < 1:
            raise ValueError(f"upsample_factor must be >= 1, got {upsample_factor}")
        self.in_channels = in_channels
        self.upsample_factor = upsample_factor
        if convnet_variant == "default":
            self.convnet: nn.Module = default_mask_convs(
                in_channels, num_filters=num_filters, num_convs=num_convs
            )
            trunk_channels = num_filters
        else:
            self.convnet = build_hourglass(convnet_variant, in_channels, num_filters)
            self.size_multiple = self.convnet.downsample_factor
            trunk_channels = self.convnet.out_channels
        self.deconv = variance_scaling_fan_out_(
            nn.ConvTranspose2d(trunk_channels, num_filters, upsample_factor, stride=upsample_factor)
        )
        self.deconv_bn = _marc_bn(num_filters)
        self.mask_regressor = variance_scaling_fan_out_(nn.Conv2d(num_filters, 1, 1))

    def output_size(self, size: int) -> int:
        return size * self.upsample_factor

    def forward(self, features: Tensor) -> Tensor:
        """``(N, C_in, S, S) -> (N, 1, f S, f S)`` mask logits."""
        self.check_input(features)
        x = self.convnet(features)
        x = F.relu(self.deconv_bn(self.deconv(x)), inplace=True)
        return self.mask_regressor(x)
