"""FPN-lite upsampling neck: merges stride 4/8/16/32 trunk features into one stride-4 map.

Mirrors the top-down path of the OD API's CenterNet ResNet-v1-FPN feature extractor
(``center_net_resnet_v1_fpn_feature_extractor.py``): a 1x1 lateral of C5, then three times
"nearest x2 upsample, add the 1x1 lateral of the next finer level, 3x3 conv-BN-ReLU". Chosen over
CenterNet's plain deconv stack (3 x deconv from stride 32, no skips) because the stride-4 map
feeds the 32x32 mask crops, and the C2/C3 laterals put back the fine detail that the stride-32
features lost, for about the same cost on CPU (no transposed convs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPNLiteNeck", "default_neck_widths"]


def default_neck_widths(out_channels: int) -> tuple[int, int, int]:
    """Top-down widths at strides 32/16/8: OD API ``(256, 128, 64)``, never below ``C_out``."""
    return (max(256, out_channels), max(128, out_channels), max(64, out_channels))


def _glorot(module: nn.Conv2d) -> nn.Conv2d:
    # The OD API builds this neck from Keras layers: glorot-uniform kernels, zero biases.
    nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


class FPNLiteNeck(nn.Module):
    """Top-down merge of ``(C2, C3, C4, C5)`` into a ``(B, out_channels, H/4, W/4)`` map.

    ``x = lat5(C5)``; then for ``(C4, C3, C2)``: ``x = conv_bn_relu(up2(x) + lat(C))``. The
    laterals are biased 1x1 convs (no BN, as in the OD API); the 3x3 convs are bias-free because
    BN follows them.

    Args:
        in_channels: channels of the trunk features at strides 4, 8, 16 and 32.
        out_channels: ``C_out`` of the stride-4 output.
        widths: channels of the top-down path at strides 32, 16 and 8 (the stride-4 conv outputs
            ``out_channels``); default ``default_neck_widths(out_channels)``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        *,
        out_channels: int,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(
                f"in_channels must list the stride 4/8/16/32 channels, got {tuple(in_channels)}"
            )
        widths = tuple(default_neck_widths(out_channels) if widths is None else widths)
        if len(widths) != 3:
            raise ValueError(f"widths must give the stride 32/16/8 channels, got {widths}")
        c2, c3, c4, c5 = in_channels
        self.out_channels = out_channels
        # Lateral i is added to the map whose width is lateral_widths[i].
        lateral_widths = (widths[0], widths[0], widths[1], widths[2])
        self.laterals = nn.ModuleList(
            _glorot(nn.Conv2d(c, w, 1))
            for c, w in zip((c5, c4, c3, c2), lateral_widths, strict=True)
        )
        conv_widths = (widths[0], widths[1], widths[2], out_channels)
        self.convs = nn.ModuleList(
            nn.Sequential(
                _glorot(nn.Conv2d(conv_widths[i], conv_widths[i + 1], 3, padding=1, bias=False)),
                nn.BatchNorm2d(conv_widths[i + 1]),
                nn.ReLU(inplace=True),
            )
            for i in range(3)
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``[C2 (B, c2, H/4, W/4), C3, C4, C5 (B, c5, H/32, W/32)] -> (B, C_out, H/4, W/4)``."""
        c2, c3, c4, c5 = features
        x = self.laterals[0](c5)
        for lateral, conv, finer in zip(self.laterals[1:], self.convs, (c4, c3, c2), strict=True):
            x = F.interpolate(x, size=finer.shape[-2:], mode="nearest")  # UpSampling2D(2)
            x = conv(x + lateral(finer))
        return x


class TrunkWithNeck(nn.Module):
    """A classifier trunk (``body``, returning C2..C5) + ``FPNLiteNeck`` (``neck``): the
    one-map backbones. Subclasses build the trunk and call ``_attach_neck``."""

    body: nn.Module
    out_channels: int

    def _attach_neck(self, out_channels: int, neck_widths: Sequence[int] | None) -> None:
        self.neck = FPNLiteNeck(
            self.body.out_channels, out_channels=out_channels, widths=neck_widths
        )
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised images -> ``[(B, C_out, H/4, W/4)]``."""
        self.check_images(images)
        return [self.neck(self.body(images))]
