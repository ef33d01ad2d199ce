"""The backbone contract: normalised images in, a list of stride-4 feature maps out.

Every backbone maps ``(B, 3, H, W)`` float images to a list of ``num_outputs`` feature maps of
shape ``(B, out_channels, H / 4, W / 4)``. Hourglass104 returns one map per stack (the
intermediate-supervision outputs of reference/official-implementation.md §1.2; the last one is
the final output), every other backbone a one-element list.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base class holding the output contract and the input check.

    Subclasses set ``out_channels``, ``num_outputs`` and ``size_multiple`` (``H`` and ``W`` must
    be multiples of it: 32 for the ResNet/EfficientNet trunks, 128 for the 5-stage hourglasses)
    and call ``self.check_images(images)`` first thing in ``forward``.

    Attributes:
        out_channels: ``C_out`` of every returned map.
        stride: output stride, always 4.
        num_outputs: length of the returned list.
        size_multiple: ``H`` and ``W`` must be divisible by this.
    """

    out_channels: int
    stride: int = 4
    num_outputs: int = 1
    size_multiple: int = 32

    def check_images(self, images: Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` naming expected vs found for a bad image batch.

        Args:
            images: expected float ``(B, 3, H, W)`` with ``H, W`` multiples of
                ``size_multiple``.
        """
        name = type(self).__name__
        if not isinstance(images, Tensor):
            raise TypeError(f"{name} expects a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{name} expects images of shape (B, 3, H, W), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise TypeError(f"{name} expects normalised float images, got {images.dtype}")
        height, width = images.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"{name} needs H and W to be multiples of {self.size_multiple}, "
                f"got {height}x{width} (pad the batch: collate size_divisibility="
                f"{self.size_multiple})"
            )
