"""A mask head's hourglass moved into the backbone: paper Table 7 at CPU scale.

Table 7 asks whether the depth of a deep mask head could as well sit in the backbone: an
HG-104 backbone with a ResNet-4 head against an HG-52 backbone with an HG-52 head, both from
scratch, hours per run on GPUs. At CPU scale the backbone is the pretrained EfficientNet-Lite0 +
FPN-lite, and the question becomes: the same Hourglass-20 network (same depth, width and
blocks as the ``hourglass20`` head) applied once to the whole stride-4 map, before the crop, with
a ResNet-4 head after it, against that Hourglass-20 as the head, applied to every 32x32 crop.
Only the place of the network differs: it sees the whole image at stride 4 instead of one
instance's box resampled to 32x32.
"""

from __future__ import annotations

from torch import Tensor

from deepmac.backbones.efficientnet import EfficientNetLiteBackbone
from deepmac.layers.hourglass_network import HOURGLASS_HEADS, build_hourglass

__all__ = ["HourglassRefinedBackbone"]


class HourglassRefinedBackbone(EfficientNetLiteBackbone):
    """EfficientNet-Lite trunk (``body``) + FPN-lite (``neck``) + a head's hourglass (``refine``).

    The trunk keeps ``EfficientNetLiteBackbone``'s module names, so the ImageNet weights load
    into it unchanged and ``model.freeze_at`` freezes its stages; ``refine`` starts from the
    head's own initialisation (glorot-uniform, bias-free convs, Keras BN) and always trains.

    Args:
        hourglass: a key of ``HOURGLASS_HEADS`` (``"hourglass20"``).
        num_init_channels: the hourglass' ``nc``, as ``model.num_init_channels`` for the head
            (64); its output has ``2 * nc`` channels for the Hourglass-20 family.
        **kwargs: ``EfficientNetLiteBackbone`` arguments (``variant``, ``out_channels`` of the
            neck, ...).

    Forward: ``(B, 3, H, W) -> [(B, 2 * nc, H / 4, W / 4)]``, ``H, W`` multiples of 32 (and so
    ``H / 4`` of the hourglass' ``2 ** stages``: 4 for Hourglass-20).
    """

    def __init__(
        self, *, hourglass: str = "hourglass20", num_init_channels: int = 64, **kwargs: object
    ) -> None:
        if hourglass not in HOURGLASS_HEADS:
            raise ValueError(
                f"hourglass must be one of {sorted(HOURGLASS_HEADS)}, got {hourglass!r}"
            )
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.refine = build_hourglass(hourglass, self.out_channels, num_init_channels)
        self.out_channels = self.refine.out_channels
        # The hourglass halves the stride-4 map once per stage; it must come out whole.
        self.size_multiple = max(self.size_multiple, 4 * self.refine.downsample_factor)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``(B, 3, H, W)`` normalised images -> ``[(B, C_out, H/4, W/4)]``."""
        return [self.refine(level) for level in super().forward(images)]
