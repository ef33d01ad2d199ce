"""Box prompts for ``deepmac predict``: read from a COCO instances JSON or a COCO results JSON.

* Instances JSON (``images`` + ``annotations``): images are matched to files by the base name of
  ``file_name``; crowd annotations are skipped.
* Results JSON (a list of ``{"image_id", "bbox", "category_id", "score"}``, e.g. a detector's
  output): images are matched by COCO's naming, the file stem being the image id
  (``000000000139.jpg`` is image 139).

Categories may be any, seen in training or not: the mask head is class-agnostic.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from deepmac.structures.boxes import box_xywh_to_xyxy, clip_boxes

logger = logging.getLogger(__name__)


@dataclass
class BoxPrompt:
    """The boxes of one image. ``boxes`` ``(N, 4)`` float32 xyxy; ``category_ids``,
    ``scores`` ``(N,)``; ``labels`` N display strings."""

    image_id: int
    boxes: Tensor
    category_ids: Tensor
    scores: Tensor
    labels: list[str]

    def valid(self, height: int, width: int, source: str = "") -> BoxPrompt:
        """Boxes clipped to the image; boxes left with no area are dropped with one warning."""
        clipped = clip_boxes(self.boxes, (height, width))
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        if not keep.all():
            logger.warning(
                "%s image %d: %d box(es) with no area inside the %dx%d image skipped",
                source,
                self.image_id,
                int((~keep).sum()),
                width,
                height,
            )
        return BoxPrompt(
            self.image_id,
            clipped[keep],
            self.category_ids[keep],
            self.scores[keep],
            [label for label, k in zip(self.labels, keep.tolist(), strict=True) if k],
        )


def _prompt(
    image_id: int, entries: list[dict], names: dict[int, str], default_score: float
) -> BoxPrompt:
    boxes = torch.tensor([e["bbox"] for e in entries], dtype=torch.float32).reshape(-1, 4)
    category_ids = torch.tensor([int(e.get("category_id", 0)) for e in entries], dtype=torch.long)
    scores = torch.tensor([float(e.get("score", default_score)) for e in entries])
    labels = [names.get(int(c), str(int(c))) for c in category_ids]
    return BoxPrompt(image_id, box_xywh_to_xyxy(boxes), category_ids, scores, labels)


def _check_bbox(entry: dict, where: str) -> None:
    bbox = entry.get("bbox")
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
    ):
        raise ValueError(f"{where}: expected 'bbox' as [x, y, w, h] numbers, got {bbox!r}")
    if "image_id" not in entry:
        raise ValueError(f"{where}: missing 'image_id'")


def load_box_prompts(path: str | Path, image_files: list[str]) -> dict[str, BoxPrompt]:
    """Read box prompts and match them to the given image file names.

    Args:
        path: COCO instances JSON or COCO results JSON.
        image_files: base names of the images to segment.

    Returns:
        file name -> ``BoxPrompt`` (images without boxes are absent).

    Raises:
        ValueError: malformed JSON or entries, or boxes for an image that is not among
            ``image_files``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"boxes file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None

    if isinstance(data, dict) and "annotations" in data and "images" in data:
        id_to_file = {int(im["id"]): Path(im["file_name"]).name for im in data["images"]}
        names = {int(c["id"]): c["name"] for c in data.get("categories", [])}
        entries = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
        default_score = 1.0
    elif isinstance(data, list):
        id_to_file = {}
        for name in image_files:
            stem = Path(name).stem
            if stem.isdigit():
                id_to_file[int(stem)] = name
        names, entries, default_score = {}, data, 1.0
    else:
        found = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: expected a COCO instances JSON (with 'images' and 'annotations') or a COCO "
            f"results JSON (a list of detections), found {found}"
        )

    grouped: dict[int, list[dict]] = {}
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path} entry {k}: expected an object, got {type(entry).__name__}")
        _check_bbox(entry, f"{path} entry {k}")
        grouped.setdefault(int(entry["image_id"]), []).append(entry)
    available = set(image_files)
    missing = sorted(i for i in grouped if id_to_file.get(i) not in available)
    if missing:
        raise ValueError(
            f"{path} has boxes for image id(s) {missing[:10]} that are not among the "
            f"{len(image_files)} given image(s); pass their files or folder with --images"
            + (
                ""
                if isinstance(data, dict)
                else " (results files match images named by id, e.g. 000000000139.jpg)"
            )
        )
    return {id_to_file[i]: _prompt(i, group, names, default_score) for i, group in grouped.items()}
