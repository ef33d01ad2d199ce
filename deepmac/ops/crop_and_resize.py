"""TF ``crop_and_resize`` semantics, as Deep-MAC crops its pixel embedding and GT masks.

The official Deep-MAC crops with ``spatial_transform_ops.matmul_crop_and_resize`` (see
reference/official-implementation.md §1.5):

* a box coordinate ``y`` of an image of height ``H_img`` is normalised, ``y / H_img``, and the
  normalised value maps to the feature pixel ``y / H_img * (h - 1)`` (pixels are points);
* the ``S`` samples along an axis are ``linspace(y1, y2, S)`` in that pixel frame, so the first
  and last samples fall exactly on the box edges (for ``S = 1``, the box centre);
* each sample is bilinear over its 4 neighbours, and a neighbour outside ``[0, h - 1]``
  contributes 0 (the test is per neighbour, as in the matmul implementation).

The arithmetic follows the TF op step by step (scale the box edges, then ``start + t * length``
with ``tf.linspace``'s float32 values, then weights ``1 - l`` and ``l`` of the floor neighbours),
so the sample positions are TF's float32 values bit for bit and the crops agree with the official
op to float32 rounding of the final weighted sum (``deepmac.convert.parity``). An earlier
``grid_sample`` version re-derived the positions from normalised grid coordinates, which moved
them by up to an ulp of the map size and the crops by ~1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deepmac.ops._checks import check_boxes_and_index, check_features, output_hw


def tf_linspace01(num: int, *, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """``tf.linspace(0., 1., num)`` bit for bit: ``i * (1 / (num - 1))`` in ``dtype``, the last
    value exactly 1 (``torch.linspace`` rounds some values differently)."""
    if num == 1:
        return torch.zeros(1, dtype=dtype, device=device)
    delta = torch.ones((), dtype=dtype, device=device) / (num - 1)
    steps = torch.arange(num, dtype=dtype, device=device) * delta
    steps[-1] = 1.0
    return steps


def crop_sample_points(lo: Tensor, hi: Tensor, num: int, scale: float) -> Tensor:
    """Sample positions of one axis, ``(N, num)``, in feature pixels.

    Computed as TF's ``_coordinate_vector_1d`` does: edges scaled first, then
    ``start + t * (end - start)`` (``S = 1``: the centre ``start + (end - start) / 2``).

    Args:
        lo, hi: ``(N,)`` box edges, already normalised to ``[0, 1]`` of the image extent.
        num: number of samples.
        scale: ``h - 1`` of the feature map along this axis.
    """
    start, end = lo * scale, hi * scale
    if num == 1:
        return (start + (end - start) * 0.5)[:, None]
    steps = tf_linspace01(num, dtype=lo.dtype, device=lo.device)
    return start[:, None] + steps[None, :] * (end - start)[:, None]


def bilinear_zero_outside(features: Tensor, ys: Tensor, xs: Tensor, batch_index: Tensor) -> Tensor:
    """Bilinear samples on the separable grid ``ys x xs`` of each box, ``(N, C, S_h, S_w)``.

    A neighbour outside the map has weight 0. Interpolated along x first, on both neighbour
    rows, then along y: ``(1 - l) + l`` rounds to exactly 1 in floating point, so a constant
    region stays exactly constant (a mask interior stays 1), which a single 4-term weighted sum
    does not guarantee. The neighbours are gathered as rows of the NHWC map (C contiguous
    values each). Eager code weights them in one fused ``embedding_bag`` call (3x faster than
    gather-then-multiply on CPU, forward and backward); under export tracing, where
    ``embedding_bag`` does not export for an empty batch of boxes, one ``index_select`` (an ONNX
    ``Gather``) and two multiply-adds compute the same values (to float32 rounding).

    Args:
        features: ``(B, C, h, w)``.
        ys: ``(N, S_h)`` and xs: ``(N, S_w)`` sample positions in feature pixels.
        batch_index: ``(N,)`` int64 image of each box.
    """
    num, size_h = ys.shape
    size_w = xs.shape[1]
    batch, channels, h, w = features.shape
    # float32 at least: under autocast the map may be bf16, and the weights must share its dtype.
    dtype = torch.promote_types(features.dtype, torch.float32)
    rows = features.permute(0, 2, 3, 1).reshape(batch * h * w, channels).to(dtype)
    y0, x0 = ys.floor(), xs.floor()
    ly, lx = (ys - y0).to(dtype), (xs - x0).to(dtype)
    y_nb = torch.stack([y0, y0 + 1], dim=-1)  # (N, S_h, 2) top, bottom neighbour
    x_nb = torch.stack([x0, x0 + 1], dim=-1)  # (N, S_w, 2) left, right neighbour
    wy = torch.stack([1 - ly, ly], dim=-1) * ((y_nb >= 0) & (y_nb <= h - 1))
    wx = torch.stack([1 - lx, lx], dim=-1) * ((x_nb >= 0) & (x_nb <= w - 1))
    row_start = batch_index[:, None, None] * (h * w) + y_nb.long().clamp(0, h - 1) * w
    index = row_start[:, :, :, None, None] + x_nb.long().clamp(0, w - 1)[:, None, None, :, :]
    # Both neighbour rows, interpolated along x: (N, S_h, 2, S_w, C).
    if torch.compiler.is_compiling():
        nb = rows.index_select(0, index.reshape(-1)).view(num, size_h, 2, size_w, 2, channels)
        along_x = nb[..., 0, :] * wx[:, None, None, :, 0, None]
        along_x = along_x + nb[..., 1, :] * wx[:, None, None, :, 1, None]
    else:
        weight_x = wx[:, None, None, :, :].expand(num, size_h, 2, size_w, 2)
        along_x = F.embedding_bag(
            index.reshape(-1, 2), rows, per_sample_weights=weight_x.reshape(-1, 2), mode="sum"
        ).view(num, size_h, 2, size_w, channels)
    out = along_x[:, :, 0] * wy[:, :, 0, None, None] + along_x[:, :, 1] * wy[:, :, 1, None, None]
    return out.permute(0, 3, 1, 2)  # (N, C, S_h, S_w)


def crop_and_resize(
    features: Tensor,
    boxes: Tensor,
    output_size: int | tuple[int, int],
    batch_index: Tensor | None = None,
    image_size: tuple[float, float] | None = None,
) -> Tensor:
    """Crop ``features`` at ``boxes`` and resize each crop to ``output_size``, TF style.

    Differentiable with respect to ``features`` (and boxes).

    Args:
        features: ``(B, C, h, w)`` float feature map (or masks as a 1-channel map).
        boxes: ``(N, 4)`` float ``xyxy`` boxes in absolute pixels of an image of size
            ``image_size`` that the feature map covers.
        output_size: ``S`` or ``(S_h, S_w)``.
        batch_index: ``(N,)`` int64 image index of each box; may be omitted when ``B == 1``.
        image_size: ``(H_img, W_img)`` of the frame the boxes are in; defaults to ``(h, w)``,
            i.e. boxes already in feature-map pixels of the normalised TF convention.

    Returns:
        ``(N, C, S_h, S_w)`` crops, dtype of ``features``.
    """
    check_features(features)
    batch_index = check_boxes_and_index(boxes, batch_index, features.shape[0])
    out_h, out_w = output_hw(output_size)
    h, w = features.shape[-2:]
    img_h, img_w = (h, w) if image_size is None else image_size

    boxes = boxes.to(torch.promote_types(features.dtype, torch.float32))
    ys = crop_sample_points(boxes[:, 1] / img_h, boxes[:, 3] / img_h, out_h, h - 1)  # (N, S_h)
    xs = crop_sample_points(boxes[:, 0] / img_w, boxes[:, 2] / img_w, out_w, w - 1)  # (N, S_w)
    return bilinear_zero_outside(features, ys, xs, batch_index).to(features.dtype)
