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

from deepmac.data.coco_fields import (
    entry_where,
    finite_number_field,
    finite_numbers_field,
    int_field,
    object_entry,
    text_field,
)
from deepmac.structures.boxes import box_xywh_to_xyxy, clip_boxes

logger = logging.getLogger(__name__)


@dataclass
class BoxPrompt:
    """The boxes of one image. ``boxes`` ``(N, 4)`` float32 xyxy; ``category_ids``,
    ``scores`` ``(N,)``; ``labels`` N display strings; ``frame`` the ``(H, W)`` an instances
    JSON gives the image (the frame the boxes were drawn in), None for a results JSON."""

    image_id: int
    boxes: Tensor
    category_ids: Tensor
    scores: Tensor
    labels: list[str]
    frame: tuple[int, int] | None = None

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
            self.frame,
        )


def _prompt(
    image_id: int,
    entries: list[dict],
    names: dict[int, str],
    frame: tuple[int, int] | None,
) -> BoxPrompt:
    """The ``BoxPrompt`` of entries checked by ``_check_entry`` (score 1 where none)."""
    boxes = torch.tensor([e["bbox"] for e in entries], dtype=torch.float32).reshape(-1, 4)
    category_ids = torch.tensor([e.get("category_id", 0) for e in entries], dtype=torch.long)
    scores = torch.tensor([e.get("score", 1.0) for e in entries], dtype=torch.float32)
    labels = [names.get(int(c), str(int(c))) for c in category_ids]
    return BoxPrompt(image_id, box_xywh_to_xyxy(boxes), category_ids, scores, labels, frame)


def _check_entry(entry: dict, where: str, image: str) -> dict:
    """One box entry with typed fields: ``image_id`` (checked by the caller), finite ``bbox``,
    integer ``category_id`` and finite ``score`` when present. ``image`` names the image in
    the messages, so a NaN box reads "entry 5 (image id 7, a.jpg) field 'bbox' ..."."""
    where = f"{where} ({image})"
    checked = {"bbox": finite_numbers_field(entry, "bbox", where, length=4, meaning="[x, y, w, h]")}
    if "category_id" in entry:
        checked["category_id"] = int_field(entry, "category_id", where)
    if "score" in entry:
        checked["score"] = finite_number_field(entry, "score", where)
    return checked


def _instances_index(
    data: dict, path: Path
) -> tuple[dict[int, str], dict[int, tuple[int, int]], dict[int, str]]:
    """``image id -> file base name``, ``image id -> (height, width)`` (where both are given)
    and ``category id -> name`` of an instances JSON."""
    id_to_file, frames, names = {}, {}, {}
    for section in ("images", "annotations", "categories"):
        if not isinstance(data.get(section, []), list):
            found = type(data[section]).__name__
            raise ValueError(f"{path}: '{section}' must be a list, found {found}")
    for k, image in enumerate(data["images"]):
        where = entry_where(path, "images", k)
        image_id = int_field(object_entry(image, where), "id", where)
        id_to_file[image_id] = Path(text_field(image, "file_name", where)).name
        if "height" in image or "width" in image:
            frames[image_id] = (
                int_field(image, "height", where, minimum=1),
                int_field(image, "width", where, minimum=1),
            )
    for k, category in enumerate(data.get("categories", [])):
        where = entry_where(path, "categories", k)
        names[int_field(object_entry(category, where), "id", where)] = text_field(
            category, "name", where
        )
    return id_to_file, frames, names


def load_box_prompts(path: str | Path, image_files: list[str]) -> dict[str, BoxPrompt]:
    """Read box prompts and match them to the given image file names.

    Args:
        path: COCO instances JSON or COCO results JSON.
        image_files: base names of the images to segment.

    Returns:
        file name -> ``BoxPrompt`` (images without boxes are absent).

    Raises:
        ValueError: malformed JSON or entries (a field of the wrong type, a non-finite box or
            score: the message names the file, the entry index, its image and the field), or
            boxes for an image that is not among ``image_files``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"boxes file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None

    if isinstance(data, dict) and "annotations" in data and "images" in data:
        id_to_file, frames, names = _instances_index(data, path)
        # How messages name entry k: by its place in the file's list.
        entry_label, entries = "annotations[{}]", data["annotations"]
    elif isinstance(data, list):
        id_to_file = {}
        for name in image_files:
            stem = Path(name).stem
            if stem.isdigit():
                id_to_file[int(stem)] = name
        frames, names, entry_label, entries = {}, {}, "entry {}", data
    else:
        found = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: expected a COCO instances JSON (with 'images' and 'annotations') or a COCO "
            f"results JSON (a list of detections), found {found}"
        )

    grouped: dict[int, list[dict]] = {}
    for k, entry in enumerate(entries):
        where = f"{path}: {entry_label.format(k)}"
        image_id = int_field(object_entry(entry, where), "image_id", where)
        if entry.get("iscrowd", 0):  # crowd regions are no objects to segment
            continue
        file = id_to_file.get(image_id)
        image = f"image id {image_id}" + (f", {file}" if file else "")
        grouped.setdefault(image_id, []).append(_check_entry(entry, where, image))
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
    return {id_to_file[i]: _prompt(i, group, names, frames.get(i)) for i, group in grouped.items()}


def warn_if_xyxy(
    prompts: dict[str, BoxPrompt], sizes: dict[str, tuple[int, int]], source: str
) -> None:
    """One warning when many boxes (a quarter or more), read as COCO ``[x, y, w, h]``, run
    past their image's edge: the file most likely holds ``[x1, y1, x2, y2]`` boxes, whose
    masks would be wrong without any error.

    Args:
        prompts: file name -> boxes, as from ``load_box_prompts``.
        sizes: file name -> ``(H, W)`` of the image the boxes are drawn on.
        source: the boxes file, for the message.
    """
    past = total = 0
    for name, prompt in prompts.items():
        height, width = sizes[name]
        boxes = prompt.boxes  # (N, 4) xyxy
        # One pixel of slack: exporters round boxes that touch the edge.
        past += int(((boxes[:, 2] > width + 1) | (boxes[:, 3] > height + 1)).sum())
        total += len(boxes)
    if past and 4 * past >= total:
        logger.warning(
            "%s: %d of %d boxes run past their image's edge as [x, y, width, height]; are these "
            "xyxy? COCO boxes are [x, y, width, height]",
            source,
            past,
            total,
        )
