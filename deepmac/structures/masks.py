"""Mask targets cropped at boxes, and box-relative mask probabilities pasted back into images.

``crop_mask_targets`` and ``paste_masks_in_image`` follow the TF ``crop_and_resize``
convention of Deep-MAC (see ``deepmac.ops.crop_and_resize``): the paste is the exact inverse
mapping of the crop, as the official ``reframe_box_masks_to_image_masks`` is.
``paste_roi_masks`` is Deep-MARC's: the RoIAlign (half-pixel) convention of its crops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepmac.ops.crop_and_resize import crop_and_resize
from deepmac.structures.boxes import check_boxes

#: Upper bound on floats materialised at once by the mask ops (about 128 MB in float32).
_MAX_FLOATS_PER_CHUNK = 32 * 1024 * 1024


def _check_masks(masks: Tensor, name: str, ndim: int = 3) -> None:
    if not isinstance(masks, Tensor) or masks.dim() != ndim:
        found = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        dims = "(N, H, W)" if ndim == 3 else "(N, S, S)"
        raise ValueError(f"{name} must be a tensor of shape {dims}, got {found}")


def crop_mask_targets(gt_masks: Tensor, boxes: Tensor, mask_size: int) -> Tensor:
    """Soft ``S x S`` mask targets: each GT mask cropped at its box (bilinear, never binarised).

    Args:
        gt_masks: ``(N, H, W)`` bool or float masks in the image frame.
        boxes: ``(N, 4)`` float xyxy boxes in that frame (GT boxes, possibly jittered).
        mask_size: ``S``.

    Returns:
        ``(N, S, S)`` float32 targets in ``[0, 1]``.
    """
    _check_masks(gt_masks, "gt_masks")
    check_boxes(boxes)
    if gt_masks.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"gt_masks and boxes must hold the same N, got {gt_masks.shape[0]} and {boxes.shape[0]}"
        )
    num, height, width = gt_masks.shape
    out = torch.zeros(num, mask_size, mask_size, device=gt_masks.device)
    chunk = max(1, _MAX_FLOATS_PER_CHUNK // max(1, height * width))
    for start in range(0, num, chunk):
        part = gt_masks[start : start + chunk].float()[:, None]  # (n, 1, H, W)
        index = torch.arange(part.shape[0], device=gt_masks.device)
        crops = crop_and_resize(part, boxes[start : start + chunk].float(), mask_size, index)
        out[start : start + chunk] = crops[:, 0]
    return out


def _paste_weights(lo: Tensor, hi: Tensor, image_len: int, mask_len: int) -> Tensor:
    """Bilinear weights ``(N, image_len, mask_len)`` mapping mask samples to image pixels.

    Image pixel ``i`` sits at the normalised position ``i / (image_len - 1)``; the mask's samples
    span the box edges ``lo..hi`` (normalised). A pixel whose mask coordinate falls outside
    ``[0, S - 1]`` gets no weight (TF ``crop_and_resize`` extrapolation value 0).
    """
    positions = torch.arange(image_len, dtype=torch.float32, device=lo.device)
    positions = positions / max(image_len - 1, 1)
    extent = (hi - lo).clamp(min=1e-6)  # as the official reframe, which clamps at 1e-4
    coord = (positions[None, :] - lo[:, None]) / extent[:, None] * (mask_len - 1)  # (N, I)
    inside = (coord >= 0) & (coord <= mask_len - 1)
    coord = coord.clamp(0, mask_len - 1)
    low = coord.floor()
    frac = coord - low
    low = low.long()
    high = (low + 1).clamp(max=mask_len - 1)
    weights = torch.zeros(lo.shape[0], image_len, mask_len, device=lo.device)
    weights.scatter_add_(2, low[:, :, None], (1 - frac)[:, :, None])
    weights.scatter_add_(2, high[:, :, None], frac[:, :, None])
    return weights * inside[:, :, None]


def paste_masks_in_image(
    mask_probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
) -> Tensor:
    """Paste box-relative mask probabilities into the image frame.

    Bilinear resampling of the ``S x S`` probability map onto the image at its box, zeros
    outside the box, then ``> threshold`` (strict, as the official evaluation). Implemented as
    two small matrix products per mask (rows, then columns), which is exact and fast.

    Args:
        mask_probs: ``(N, S, S)`` or ``(N, 1, S, S)`` probabilities in ``[0, 1]``.
        boxes: ``(N, 4)`` float xyxy boxes in pixels of the target image.
        image_size: ``(H, W)`` of the target image.
        threshold: binarisation threshold; ``None`` returns the soft pasted probabilities.

    Returns:
        ``(N, H, W)`` bool masks (float32 probabilities when ``threshold is None``).
    """
    return _paste(mask_probs, boxes, image_size, threshold, _tf_axis_weights, strict=True)


def _tf_axis_weights(lo: Tensor, hi: Tensor, length: int, cells: int) -> Tensor:
    """``_paste_weights`` for box edges in pixels of an axis of ``length`` pixels."""
    return _paste_weights(lo / length, hi / length, length, cells)


def _paste(
    mask_probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None,
    axis_weights,
    *,
    strict: bool,
) -> Tensor:
    """Shared body of the two paste conventions: ``rows @ probs @ cols^T`` per mask, where
    ``axis_weights(lo, hi, length, cells)`` gives the ``(n, length, cells)`` bilinear weights of
    one axis from box edges ``(n,)`` in pixels. Chunked so that at most about 32M floats of
    pasted masks exist at once. ``strict``: ``> threshold`` instead of ``>= threshold``."""
    if mask_probs.dim() == 4:
        if mask_probs.shape[1] != 1:
            raise ValueError(f"mask_probs must be (N, 1, S, S), got {tuple(mask_probs.shape)}")
        mask_probs = mask_probs[:, 0]
    _check_masks(mask_probs, "mask_probs", ndim=3)
    check_boxes(boxes)
    if mask_probs.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"mask_probs and boxes must hold the same N, got {mask_probs.shape[0]} "
            f"and {boxes.shape[0]}"
        )
    height, width = (int(v) for v in image_size)
    num = boxes.shape[0]
    dtype = torch.bool if threshold is not None else torch.float32
    out = torch.zeros(num, height, width, dtype=dtype, device=mask_probs.device)
    boxes = boxes.float()
    chunk = max(1, _MAX_FLOATS_PER_CHUNK // max(1, height * width))
    for start in range(0, num, chunk):
        part = slice(start, start + chunk)
        rows = axis_weights(boxes[part, 1], boxes[part, 3], height, mask_probs.shape[1])
        cols = axis_weights(boxes[part, 0], boxes[part, 2], width, mask_probs.shape[2])
        pasted = rows @ mask_probs[part].float() @ cols.transpose(1, 2)  # (n, H, W)
        if threshold is None:
            out[part] = pasted
        else:
            out[part] = pasted > threshold if strict else pasted >= threshold
    return out


def paste_roi_masks(
    mask_probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = 0.5,
) -> Tensor:
    """Paste box-relative mask probabilities (RoIAlign convention) into the image.

    Args:
        mask_probs: ``(N, S, S)`` or ``(N, 1, S, S)`` probabilities.
        boxes: ``(N, 4)`` xyxy boxes in pixels of the target image.
        image_size: ``(H, W)``.
        threshold: ``>= threshold`` gives bool masks; ``None`` returns the soft probabilities.

    Returns:
        ``(N, H, W)`` bool masks (float32 when ``threshold is None``).
    """
    return _paste(mask_probs, boxes, image_size, threshold, _roi_axis_weights, strict=False)


def _roi_axis_weights(lo: Tensor, hi: Tensor, length: int, cells: int) -> Tensor:
    """Bilinear weights ``(N, length, cells)`` from mask cells to image pixels along one axis.

    Pixel ``p`` (centre ``p + 0.5``) reads the mask at cell coordinate
    ``u = (p + 0.5 - lo) / (hi - lo) * cells - 0.5`` (cell ``i`` centred at ``u = i``); taps
    outside ``[0, cells - 1]`` read zero, exactly as ``grid_sample(align_corners=False,
    padding_mode="zeros")``.
    """
    centres = torch.arange(length, dtype=torch.float32, device=lo.device) + 0.5
    extent = (hi - lo).clamp(min=1e-6)
    u = (centres[None, :] - lo[:, None]) / extent[:, None] * cells - 0.5  # (N, length)
    low = u.floor()
    frac = u - low
    low = low.long()
    weights = torch.zeros(lo.shape[0], length, cells + 2, device=lo.device)
    # Shift by one so that the taps -1 and ``cells`` land in two spill columns, then drop them.
    weights.scatter_add_(2, (low + 1).clamp(0, cells + 1)[:, :, None], (1 - frac)[:, :, None])
    weights.scatter_add_(2, (low + 2).clamp(0, cells + 1)[:, :, None], frac[:, :, None])
    return weights[:, :, 1:-1]


#: Paste conventions by name (``MaskBranch.paste_convention``; an ONNX file's ``paste``
#: metadata): TF ``crop_and_resize`` (box-prompted, Deep-MAC) and half-pixel RoIAlign
#: (Deep-MARC).
PASTE_CONVENTIONS = {"crop_and_resize": paste_masks_in_image, "roi_align": paste_roi_masks}
