"""Keras-faithful BatchNorm and initialisers, shared by the backbones and the mask heads.

The official code is TF/Keras; these keep its conventions in one place (see
reference/official-implementation.md §2, §8.1):

* Keras BatchNormalization ``momentum`` m keeps ``m`` of the old moving average, PyTorch keeps
  ``1 - momentum``, so Keras m becomes PyTorch ``1 - m``.
* Keras initialises conv/dense kernels with ``glorot_uniform`` and biases with zeros; PyTorch's
  default is kaiming-uniform with a uniform bias, so every layer re-initialises explicitly.
"""

from __future__ import annotations

from torch import nn

__all__ = [
    "HG_BN_EPS",
    "HG_BN_KERAS_MOMENTUM",
    "glorot_uniform_",
    "keras_batch_norm",
    "variance_scaling_fan_out_",
]

# hourglass_network.batchnorm(): SyncBatchNormalization(epsilon=1e-5, momentum=0.1), Keras momentum.
HG_BN_EPS = 1e-5
HG_BN_KERAS_MOMENTUM = 0.1


def keras_batch_norm(channels: int, *, keras_momentum: float, eps: float) -> nn.BatchNorm2d:
    """A ``BatchNorm2d`` that updates its running stats exactly like Keras BN.

    Args:
        channels: number of feature channels ``C``.
        keras_momentum: the Keras ``momentum`` argument (weight of the *old* moving average).
        eps: the Keras ``epsilon``.
    """
    return nn.BatchNorm2d(channels, eps=eps, momentum=1.0 - keras_momentum)


def glorot_uniform_(module: nn.Module) -> nn.Module:
    """Keras default init on a conv/linear: ``glorot_uniform`` kernel, zero bias (in place).

    PyTorch's ``xavier_uniform_`` uses the same fans as Keras for ``Conv2d`` ``(out, in, k, k)``
    and ``Linear`` ``(out, in)`` weights, so the distributions match exactly.
    """
    nn.init.xavier_uniform_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def variance_scaling_fan_out_(module: nn.Module) -> nn.Module:
    """Model Garden's ``VarianceScaling(scale=2, mode='fan_out', 'untruncated_normal')``, zero bias.

    ``std = sqrt(2 / fan_out)``. For ``ConvTranspose2d`` PyTorch stores ``(in, out, k, k)`` and
    counts ``fan_out = in * k * k``; Keras stores ``Conv2DTranspose`` kernels as
    ``(k, k, out, in)`` and also gets ``fan_out = in * k * k``, so
    ``kaiming_normal_(mode='fan_out')`` is exact for both.
    """
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module
