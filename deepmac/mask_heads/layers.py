"""Shared pieces of every mask head: the ``MaskHead`` base (input checks) and parameter counts.

All heads map ``(N, C_in, S, S)`` features to ``(N, 1, S_out, S_out)`` mask logits. The
Keras-faithful BatchNorm and initialisers they use live in ``deepmac.layers.keras`` (shared with
the backbones) and are re-exported here.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from deepmac.layers.keras import (
    HG_BN_EPS,
    HG_BN_KERAS_MOMENTUM,
    glorot_uniform_,
    keras_batch_norm,
    variance_scaling_fan_out_,
)

__all__ = [
    "HG_BN_EPS",
    "HG_BN_KERAS_MOMENTUM",
    "MaskHead",
    "count_params",
    "num_params_total",
    "keras_batch_norm",
    "glorot_uniform_",
    "variance_scaling_fan_out_",
]


class MaskHead(nn.Module):
    """Base class: remembers the input contract and validates it at the forward boundary.

    Subclasses set ``in_channels``, ``size_multiple`` (the crop side must be a multiple of it,
    e.g. ``2 ** num_stages`` for an hourglass) and ``fixed_size`` (heads with dense layers only
    accept one crop side), then call ``self.check_input(x)`` first thing in ``forward``.
    """

    in_channels: int
    size_multiple: int = 1
    fixed_size: int | None = None

    def output_size(self, size: int) -> int:
        """Side ``S_out`` of the mask logits for an input crop of side ``size``."""
        return size

    def check_input(self, features: Tensor) -> None:
        """Raise ``ValueError``/``TypeError`` naming expected vs found for bad features."""
        name = type(self).__name__
        if not isinstance(features, Tensor):
            raise TypeError(f"{name} expects a torch.Tensor, got {type(features).__name__}")
        if features.dim() != 4:
            raise ValueError(
                f"{name} expects features of shape (N, {self.in_channels}, S, S), "
                f"got a {features.dim()}-d tensor of shape {tuple(features.shape)}"
            )
        _, channels, height, width = features.shape
        if channels != self.in_channels:
            raise ValueError(
                f"{name} expects (N, {self.in_channels}, S, S) features, "
                f"got {channels} channels in {tuple(features.shape)}"
            )
        if height != width:
            raise ValueError(
                f"{name} expects square crops (N, C, S, S), got {tuple(features.shape)}"
            )
        if self.fixed_size is not None and height != self.fixed_size:
            raise ValueError(
                f"{name} was built for {self.fixed_size}x{self.fixed_size} crops, "
                f"got {height}x{width}"
            )
        if height % self.size_multiple:
            raise ValueError(
                f"{name} needs the crop side to be a multiple of {self.size_multiple} "
                f"(it halves the resolution {int(math.log2(self.size_multiple))} times), "
                f"got {height}x{width}"
            )
        if not features.is_floating_point():
            raise TypeError(f"{name} expects floating point features, got {features.dtype}")


def num_params_total(module: nn.Module) -> int:
    """Trainable parameters plus BatchNorm running mean and variance (not ``num_batches_tracked``).

    This is TF's ``params_total``: trainable variables plus the BN moving mean/variance.
    """
    total = sum(p.numel() for p in module.parameters() if p.requires_grad)
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.running_mean is not None:
            total += sub.running_mean.numel() + sub.running_var.numel()
    return total


def count_params(module: nn.Module) -> int:
    """Trainable parameters (TF's ``params``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
