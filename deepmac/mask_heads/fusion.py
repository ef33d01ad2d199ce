"""Inference speed-up for the mask heads: fold eval-mode BatchNorm into the preceding conv.

Every block declares the conv -> BN pairs that are safe to fold in a class attribute
``_fuse_pairs = (("conv", "norm"), ...)`` (the BN directly consumes that conv's output and
nothing else reads the conv's raw output). Pre-activation BNs (ResNet heads) are left alone
because a ReLU and an add sit between them and any conv. The fused copy also uses
``channels_last`` memory format, which oneDNN runs faster on CPU for these 3x3 convs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_batch_norm", "fuse_for_inference"]


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Module:
    """A conv equal to ``bn(conv(x))`` with ``bn`` in eval mode (running statistics).

    ``w' = w * gamma / sqrt(var + eps)`` per output channel, ``b' = (b - mean) * scale + beta``.
    Output channels are dim 0 of a ``Conv2d`` weight and dim 1 of a ``ConvTranspose2d`` weight.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = (
        bn.weight / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine
        else torch.rsqrt(bn.running_var + bn.eps)
    )
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    fused = copy.deepcopy(conv)
    out_dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    shape = [1] * fused.weight.dim()
    shape[out_dim] = -1
    fused.weight.mul_(scale.view(shape))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter(bias * scale + shift)
    return fused


def fuse_for_inference(module: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``module`` with foldable BNs folded into their convs.

    Args:
        module: any mask head (or a model containing mask heads); it is not modified.
        channels_last: also convert the copy to ``torch.channels_last``; inputs may stay NCHW
            (the first conv converts them), and outputs match the unfused head up to float
            rounding.

    Returns:
        The fused copy, in eval mode, with ``requires_grad=False`` parameters.
    """
    fused = copy.deepcopy(module).eval()
    for sub in fused.modules():
        for conv_name, bn_name in getattr(type(sub), "_fuse_pairs", ()):
            conv, bn = getattr(sub, conv_name), getattr(sub, bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(sub, conv_name, fold_batch_norm(conv, bn))
                setattr(sub, bn_name, nn.Identity())
    fused.requires_grad_(False)
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused
