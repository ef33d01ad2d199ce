"""Synchronised BatchNorm for CPU processes (gloo), where ``nn.SyncBatchNorm`` refuses to run.

The paper trains with synchronised BatchNorm: the statistics of a training batch are those of the
global batch, over every process. PyTorch's ``SyncBatchNorm`` needs CUDA tensors; this module
does the same over any backend with two differentiable all-reduces: one for the per-channel sum
and count, one for the sum of squared deviations from the global mean. Gradients flow back
through the reductions, so N processes with batch B compute what one process with batch N x B
computes (up to float summation order). Outside training, or without a process group, it is a
plain ``BatchNorm2d``; parameter and buffer names are unchanged, so checkpoints load either way.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients over processes: every rank's loss
    depends on every rank's inputs through the sum."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce(tensor: Tensor) -> Tensor:
    """Differentiable sum of ``tensor`` over all processes."""
    return _AllReduceSum.apply(tensor)


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics cover the batches of every process."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) input, got shape {tuple(x.shape)}")
        channels = x.shape[1]
        # Statistics in float64, as PyTorch's CPU BatchNorm accumulates them: a channel that is
        # nearly constant over the batch (e.g. a tiled instance embedding) loses its variance
        # to cancellation in float32.
        values = x.double()
        local_count = values.new_tensor([values.numel() / channels])
        totals = all_reduce(torch.cat([values.sum(dim=(0, 2, 3)), local_count]))
        count = totals[-1]
        mean = totals[:channels] / count
        centred = values - mean[None, :, None, None]
        var = all_reduce(centred.square().sum(dim=(0, 2, 3))) / count  # biased, as BN normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = centred * scale[None, :, None, None]
        if self.affine:
            out = out + self.bias[None, :, None, None]
        return out.to(x.dtype)


def convert_to_distributed_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` (in place where possible) by a
    ``DistributedBatchNorm2d`` sharing its parameter and statistics tensors.

    Returns:
        The converted module (a new object only when ``module`` itself is a BatchNorm2d).
    """
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, DistributedBatchNorm2d):
        converted = DistributedBatchNorm2d(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        # The same Parameter and buffer objects, not copies: an optimizer built before the
        # conversion must keep updating them.
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        setattr(module, name, convert_to_distributed_batchnorm(child))
    return module
