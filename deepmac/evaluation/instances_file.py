"""Predicted masks as a COCO *instances* JSON, the file annotation tools import (CVAT, Label
Studio, FiftyOne, Roboflow: their COCO importers): ``images`` with ``file_name``, ``width``,
``height``; ``categories``; ``annotations`` with ``id``, ``image_id``, ``category_id``,
``bbox`` (COCO ``[x, y, w, h]``), ``area``, ``iscrowd``, ``segmentation`` and ``score``.

Segmentations are compressed RLE (exact) or polygons (``deepmac.structures.polygons``: the mask
boundary simplified to a tolerance in pixels; holes filled). An empty mask has no polygon and
is no annotation: such instances are left out (``InstancesFile.add`` says how many).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from deepmac.evaluation.results import encode_masks
from deepmac.structures.polygons import mask_to_polygons
from deepmac.utils.io import write_json_atomic

__all__ = ["SEGMENTATION_KINDS", "InstancesFile"]

#: ``segmentation`` encodings of ``InstancesFile``.
SEGMENTATION_KINDS = ("rle", "polygon")


class InstancesFile:
    """A COCO instances JSON built image by image.

    Args:
        categories: ``[{"id", "name"}, ...]``, written as they are (plus ``supercategory``).
        segmentation: ``"rle"`` or ``"polygon"``.
        tolerance: polygon simplification tolerance in pixels.
    """

    def __init__(
        self, categories: list[dict[str, Any]], *, segmentation: str = "rle", tolerance: float = 1.0
    ) -> None:
        if segmentation not in SEGMENTATION_KINDS:
            raise ValueError(
                f"segmentation must be one of {', '.join(SEGMENTATION_KINDS)}, got {segmentation!r}"
            )
        self.categories = [{"supercategory": "object", **c} for c in categories]
        self.segmentation = segmentation
        self.tolerance = tolerance
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add_image(self, image_id: int, file_name: str, height: int, width: int) -> None:
        """An image of the output, with or without annotations (a tool shows it unlabelled)."""
        self.images.append(
            {
                "id": int(image_id),
                "file_name": file_name,
                "height": int(height),
                "width": int(width),
            }
        )

    def add(
        self,
        image_id: int,
        boxes_xyxy: np.ndarray,
        category_ids: np.ndarray,
        scores: np.ndarray,
        masks: np.ndarray,
    ) -> int:
        """The annotations of one image's masks.

        Args:
            image_id: an id given to ``add_image``.
            boxes_xyxy: ``(N, 4)`` float boxes in pixels (written as COCO ``[x, y, w, h]``).
            category_ids: ``(N,)`` int COCO category ids.
            scores: ``(N,)`` float scores.
            masks: ``(N, H, W)`` bool masks in the image frame.

        Returns:
            The number of empty masks left out.
        """
        masks = np.asarray(masks, dtype=bool)
        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        rles = encode_masks(masks)
        empty = 0
        for i, rle in enumerate(rles):
            if self.segmentation == "rle":
                segmentation, area = rle, float(mask_util.area(rle))
            else:
                segmentation = mask_to_polygons(masks[i], self.tolerance)
                area = _polygon_area(segmentation, *masks.shape[1:])
            if area == 0:
                empty += 1
                continue
            # Rounded to 1/100 pixel: float32 boxes would print as 433.6000061035156.
            x1, y1, x2, y2 = (round(float(v), 2) for v in boxes[i])
            self.annotations.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[i]),
                    "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                    "area": area,
                    "iscrowd": 0,
                    "segmentation": segmentation,
                    "score": round(float(scores[i]), 4),
                }
            )
        return empty

    def add_crowd(self, annotations: list[dict[str, Any]]) -> None:
        """Crowd annotations of the input, kept as they are (ground truth a tool should show)."""
        self.annotations += [{k: v for k, v in a.items() if k != "id"} for a in annotations]

    def to_dict(self) -> dict[str, Any]:
        """The COCO instances dict, annotation ids ``1..`` in order."""
        annotations = [{"id": k + 1, **a} for k, a in enumerate(self.annotations)]
        return {
            "info": {"description": "masks predicted by deepmac from box prompts"},
            "licenses": [],
            "images": self.images,
            "categories": self.categories,
            "annotations": annotations,
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Write the file, atomically."""
        return write_json_atomic(path, self.to_dict(), indent=None)


def _polygon_area(polygons: list[list[float]], height: int, width: int) -> float:
    """Pixels the polygons cover, as pycocotools rasterises them (0 for none)."""
    if not polygons:
        return 0.0
    return float(mask_util.area(mask_util.merge(mask_util.frPyObjects(polygons, height, width))))
