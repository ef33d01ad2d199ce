"""TensorFlow -> PyTorch weight layouts, and the TF conventions that are not weights at all.

Every function takes and returns numpy arrays (shape-only "dry runs" pass zero-stride arrays from
``np.broadcast_to``, so they must not copy). What changes between the two frameworks:

Weights (converted here):

* ``Conv2D`` kernels are ``(kh, kw, in, out)`` (HWIO); ``nn.Conv2d`` wants ``(out, in, kh, kw)``
  (OIHW). Both frameworks compute a cross-correlation, so no spatial flip is needed.
* ``Dense`` kernels are ``(in, out)``; ``nn.Linear`` wants ``(out, in)``. The flatten order in
  front of a dense layer is a property of the *module* (TF flattens NHWC, so
  ``FullyConnectedMaskHead`` permutes to NHWC before flattening); the weights need no reordering.
* ``Conv2DTranspose`` kernels are ``(kh, kw, out, in)``; ``nn.ConvTranspose2d`` wants
  ``(in, out, kh, kw)``. Both are the gradient of the same cross-correlation, so again no flip.
* BatchNormalization: ``gamma -> weight``, ``beta -> bias``, ``moving_mean -> running_mean``,
  ``moving_variance -> running_var`` (1-D, unchanged). Epsilon and momentum are *not* in a
  checkpoint: they are architecture constants, and our modules use the official values (hourglass
  1e-5, Keras-applications ResNet 1.001e-5, Deep-MARC ``norm_epsilon`` 1e-3). The parity checks
  (``deepmac.convert.parity``) confirm them numerically. Keras ``momentum`` m is PyTorch ``1 - m``
  (``deepmac.mask_heads.layers.keras_batch_norm``); it only matters for further training.
* Input channel order: the official CenterNet feeds BGR (``bgr_ordering: true``); we feed RGB,
  so the first convolution's input channels are reversed (``reverse_input_channels``).
* CenterNet's ``make_prediction_net`` has ``unit_height_conv`` in some mid-2021 revisions,
  defaulting to True where Deep-MAC does not pass it: the embedding heads then have ``(1, 3)``
  kernels. ``conv_kernel_to_torch`` embeds such a kernel in the middle row of a 3x3 kernel, which
  is exact: with 'same' padding the extra rows multiply zeros.

Conventions that are not weights (nothing to convert; recorded here because a mismatch would
silently break parity, and checked by the parity script):

* Padding. TF ``'SAME'`` pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` in total, the extra pixel
  at the *end* (``tf_same_padding``). For stride 1 and odd k it is symmetric, ``k // 2``, like
  PyTorch's ``padding=k // 2``. For stride 2 on an even size it is asymmetric (0 before, 1 after)
  and has no PyTorch ``padding=`` equivalent. The official hourglass avoids the case: its 3x3 and
  7x7 stride-2 convs use an explicit symmetric ``ZeroPadding2D`` then a 'valid' conv, and its 1x1
  stride-2 skip convs are 'same' with zero padding (they read the even pixels). So our
  ``padding=k // 2`` is exact everywhere in the converted models.
* Upsampling. Keras ``UpSampling2D`` (nearest, integer factor) repeats each pixel, exactly
  ``F.interpolate(mode="nearest", scale_factor=f)``. ``tf.image.resize(..., 'bilinear')`` uses
  half-pixel centres without antialiasing, exactly ``F.interpolate(mode="bilinear",
  align_corners=False, antialias=False)``. Deep-MARC's ``Conv2DTranspose(k = s = f, 'valid')`` is
  ``nn.ConvTranspose2d(k = s = f, padding=0)``.
* Crops. Deep-MAC crops with ``matmul_crop_and_resize`` (align-corners samples, each of the 4
  bilinear neighbours outside the map contributes 0); ``deepmac.ops.crop_and_resize`` follows it.
  ``tf.image.crop_and_resize`` differs in one place only: a sample that lies outside
  ``[0, h - 1]`` becomes 0 as a whole, where the matmul version still weights its in-range
  neighbour. Inside the map and beyond one pixel outside the two agree.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "conv_kernel_to_torch",
    "conv_transpose_kernel_to_torch",
    "dense_kernel_to_torch",
    "reverse_input_channels",
    "tf_same_padding",
    "torch_padding_for_tf_same",
]


def conv_kernel_to_torch(kernel: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """``Conv2D`` kernel ``(kh, kw, in, out)`` -> ``nn.Conv2d`` weight ``(out, in, kh', kw')``.

    Args:
        kernel: the TF kernel (HWIO).
        target_shape: the PyTorch weight shape. When it is ``(out, in, 3, 3)`` and the kernel is
            ``(1, 3, in, out)`` (``make_prediction_net(unit_height_conv=True)``), the kernel fills
            the middle row and the other rows are zero (exact under 'same' padding).

    Returns:
        OIHW array; a view when no embedding is needed.
    """
    if kernel.ndim != 4:
        raise ValueError(f"a Conv2D kernel is 4-D (kh, kw, in, out), got shape {kernel.shape}")
    weight = kernel.transpose(3, 2, 0, 1)  # (out, in, kh, kw)
    kh, kw = weight.shape[2:]
    target_hw = tuple(target_shape[2:])
    if (kh, kw) == (1, 3) and target_hw == (3, 3) and weight.shape[:2] == tuple(target_shape[:2]):
        full = np.zeros(tuple(target_shape), dtype=weight.dtype)
        full[:, :, 1:2, :] = weight
        return full
    return weight


def dense_kernel_to_torch(kernel: np.ndarray, target_shape: tuple[int, ...] = ()) -> np.ndarray:
    """``Dense`` kernel ``(in, out)`` -> ``nn.Linear`` weight ``(out, in)`` (a view)."""
    if kernel.ndim != 2:
        raise ValueError(f"a Dense kernel is 2-D (in, out), got shape {kernel.shape}")
    return kernel.T


def conv_transpose_kernel_to_torch(
    kernel: np.ndarray, target_shape: tuple[int, ...] = ()
) -> np.ndarray:
    """``Conv2DTranspose`` kernel ``(kh, kw, out, in)`` -> ``nn.ConvTranspose2d`` weight
    ``(in, out, kh, kw)`` (a view; no spatial flip, see the module docstring)."""
    if kernel.ndim != 4:
        raise ValueError(
            f"a Conv2DTranspose kernel is 4-D (kh, kw, out, in), got shape {kernel.shape}"
        )
    return kernel.transpose(3, 2, 0, 1)


def reverse_input_channels(weight: np.ndarray) -> np.ndarray:
    """Reverse the input channels (axis 1) of an OIHW weight: a BGR-trained first convolution
    becomes one that reads RGB."""
    return weight[:, ::-1]


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """``(before, after)`` zero padding TF's ``padding='SAME'`` adds along one axis.

    Output size is ``ceil(size / stride)``; the total padding is what that output needs, and an
    odd total puts the extra pixel *after* (bottom/right).
    """
    if min(size, kernel, stride, dilation) < 1:
        raise ValueError(
            f"size, kernel, stride and dilation must be >= 1, got {size}, {kernel}, {stride}, "
            f"{dilation}"
        )
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def torch_padding_for_tf_same(size: int, kernel: int, stride: int, dilation: int = 1) -> int | None:
    """The symmetric ``nn.Conv2d(padding=p)`` that reproduces TF 'SAME' on this axis, or
    ``None`` when TF pads asymmetrically (then an explicit ``F.pad`` would be needed).

    A symmetric padding ``p`` reproduces TF only if it also gives TF's output size: PyTorch
    outputs ``floor((size + 2p - effective) / stride) + 1`` pixels.
    """
    before, after = tf_same_padding(size, kernel, stride, dilation)
    if before != after:
        return None
    effective = (kernel - 1) * dilation + 1
    if (size + 2 * before - effective) // stride + 1 != math.ceil(size / stride):
        return None
    return before
