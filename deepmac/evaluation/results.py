"""COCO results format: per-image instances to result dicts, and reading/writing results JSON.

A result is ``{"image_id", "category_id", "bbox", "score"}`` plus ``"segmentation"`` when masks
are given: COCO ``xywh`` boxes and compressed RLE masks with ``counts`` as ``str`` (JSON-safe).
This is the evaluation edge where library ``xyxy`` boxes become COCO ``xywh``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepmac.data.coco_fields import finite_number_field, finite_numbers_field, int_field
from deepmac.data.coco_rle import check_rle
from deepmac.structures.boxes import box_xyxy_to_xywh
from deepmac.utils.io import write_json_atomic

ArrayLike = Tensor | np.ndarray

_REQUIRED_KEYS = ("image_id", "category_id", "score")


def _as_numpy(x: ArrayLike | Sequence, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (np.ndarray, list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def encode_masks(masks: ArrayLike) -> list[dict[str, Any]]:
    """Encode bool masks as COCO compressed RLE with ``str`` counts.

    Args:
        masks: bool ``(N, H, W)`` tensor or array, in the image frame. Integer 0/1 masks are
            accepted and cast; floating masks are rejected (threshold probabilities first).

    Returns:
        ``N`` dicts ``{"size": [H, W], "counts": str}``.

    Raises:
        ValueError: if ``masks`` is not 3-D.
        TypeError: if ``masks`` is floating point.
    """
    from pycocotools import mask as mask_util

    array = _as_numpy(masks, "masks")
    if array.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(array.shape)}")
    if np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"masks must be bool (N, H, W), got floating dtype {array.dtype}; "
            "threshold mask probabilities (> 0.5) before encoding"
        )
    if array.shape[0] == 0:
        return []
    # pycocotools encodes column-major (H, W, N) uint8 arrays.
    fortran = np.asfortranarray(array.astype(bool).transpose(1, 2, 0).astype(np.uint8))
    rles = mask_util.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def instances_to_coco_results(
    image_id: int,
    boxes_xyxy: ArrayLike,
    scores: ArrayLike,
    category_ids: ArrayLike,
    masks: ArrayLike | None = None,
) -> list[dict[str, Any]]:
    """Convert one image's instances into COCO result dicts.

    Args:
        image_id: COCO image id.
        boxes_xyxy: float ``(N, 4)`` xyxy boxes in absolute pixels of the *original* image.
        scores: float ``(N,)`` confidence scores.
        category_ids: int ``(N,)`` COCO ``category_id`` values (not contiguous ids).
        masks: optional bool ``(N, H, W)`` masks pasted into the original image frame.

    Returns:
        ``N`` result dicts; ``bbox`` is COCO ``[x, y, w, h]``, ``segmentation`` (only with
        ``masks``) is compressed RLE with ``str`` counts.

    Raises:
        ValueError: if shapes disagree, naming the expected and found sizes.
    """
    boxes = torch.as_tensor(_as_numpy(boxes_xyxy, "boxes_xyxy"), dtype=torch.float64, device="cpu")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes_xyxy must have shape (N, 4), got {tuple(boxes.shape)}")
    num = boxes.shape[0]
    scores_np = _as_numpy(scores, "scores").astype(np.float64).reshape(-1)
    cats_np = _as_numpy(category_ids, "category_ids").reshape(-1)
    for name, arr in (("scores", scores_np), ("category_ids", cats_np)):
        if arr.shape[0] != num:
            raise ValueError(f"{name} must have shape ({num},) to match boxes, got {arr.shape}")
    if np.issubdtype(cats_np.dtype, np.floating) and not np.all(cats_np == np.round(cats_np)):
        raise ValueError(f"category_ids must be integer COCO ids, got {cats_np.tolist()}")
    rles = None
    if masks is not None:
        rles = encode_masks(masks)
        if len(rles) != num:
            raise ValueError(f"masks must have {num} entries to match boxes, got {len(rles)}")
    xywh = box_xyxy_to_xywh(boxes).tolist()
    results = []
    for i in range(num):
        result = {
            "image_id": int(image_id),
            "category_id": int(cats_np[i]),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores_np[i]),
        }
        if rles is not None:
            result["segmentation"] = rles[i]
        results.append(result)
    return results


def write_coco_results(path: str | os.PathLike, results: Sequence[dict[str, Any]]) -> Path:
    """Write results as a COCO results JSON list, atomically (temp file, then ``os.replace``).

    Args:
        path: destination file; parent directories are created.
        results: result dicts as from ``instances_to_coco_results``.

    Returns:
        The destination path.
    """
    return write_json_atomic(path, list(results), indent=None)


def check_segmentation(segmentation: Any, where: str) -> None:
    """An RLE dict with valid runs, or a list of polygons of finite coordinates.

    Raises:
        ValueError: naming ``where`` and the field.
    """
    if isinstance(segmentation, dict):
        check_rle(segmentation, where)
        return
    polygons_ok = isinstance(segmentation, list) and all(
        isinstance(p, list)
        and len(p) >= 6
        and len(p) % 2 == 0
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        and all(math.isfinite(v) for v in p)
        for p in segmentation
    )
    if not polygons_ok:
        raise ValueError(
            f"{where} field 'segmentation': expected an RLE {{size, counts}} or polygons (lists "
            f"of >= 6 finite coordinates), found {str(segmentation)[:80]}"
        )


def validate_coco_results(
    results: Any, source: str = "results", *, check_masks: bool = False
) -> list[dict[str, Any]]:
    """Check that ``results`` is a list of COCO result dicts and return it.

    Each entry needs integer ``image_id`` and ``category_id``, a finite ``score``, and a
    ``bbox`` of 4 finite numbers or a ``segmentation``. With ``check_masks`` (files from
    elsewhere, as ``deepmac score`` reads) every segmentation is checked too: RLE runs that do
    not add up to the mask size would be scored as garbage by pycocotools, silently.

    Raises:
        ValueError: naming ``source``, the first malformed entry, the field, what was expected
            and what was found.
    """
    if not isinstance(results, list):
        found = type(results).__name__
        raise ValueError(f"{source}: expected a JSON list of result dicts, got {found}")
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            raise ValueError(f"{source}: entry {i} must be a dict, got {type(result).__name__}")
        missing = [k for k in _REQUIRED_KEYS if k not in result]
        if "bbox" not in result and "segmentation" not in result:
            missing.append("bbox or segmentation")
        if missing:
            raise ValueError(f"{source}: entry {i} lacks keys {missing}; found {sorted(result)}")
        where = f"{source}: entry {i}"
        int_field(result, "image_id", where)
        int_field(result, "category_id", where)
        finite_number_field(result, "score", where)
        if "bbox" in result:
            finite_numbers_field(result, "bbox", where, length=4, meaning="[x, y, w, h]")
        if check_masks and "segmentation" in result:
            check_segmentation(result["segmentation"], where)
    return results


def load_coco_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate a COCO results JSON file, its masks included.

    Raises:
        ValueError: if the file is not valid JSON or not a list of valid result dicts (names
            the path, the entry and the field).
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed COCO results JSON ({err})") from None
    return validate_coco_results(data, source=str(path), check_masks=True)
