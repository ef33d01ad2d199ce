"""Input normalisation shared by the models that take 0..255 RGB images."""

from __future__ import annotations

import torch
from torch import Tensor


class PixelNormalization:
    """Mixin for an ``nn.Module``: per-channel mean/std buffers and ``normalize``.

    The buffers are not persistent: they come from the config, so a checkpoint does not carry
    them and a model built with other statistics still loads it.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def register_pixel_statistics(
        self, mean: tuple[float, float, float], std: tuple[float, float, float]
    ) -> None:
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` 0..255 RGB to the backbone's input statistics."""
        return (images - self.pixel_mean) / self.pixel_std
