"""Box prompts for ``deepmac predict``: read from a COCO instances JSON, a COCO results JSON or
a CSV file, and matched to the image files.

* Instances JSON (``images`` + ``annotations``): each image is matched by its ``file_name``,
  then by its numeric ``id`` (a file ``000000000139.jpg`` is image 139). Its ``width`` /
  ``height`` pick the frame the boxes were drawn in; crowd annotations prompt nothing but are
  kept (``BoxPrompts.crowd``) for an instances output; ground-truth segmentations are kept for
  the overlays.
* Results JSON (a list of ``{"image_id", "bbox", "category_id", "score"}``, e.g. a detector's
  output): ``image_id`` is a file name (``"IMG_4711.jpg"``) or a numeric id.
* CSV (``image,x1,y1,x2,y2[,label][,score]``, ``deepmac.data.box_csv``): ``image`` is a file
  name, or a numeric id.

Boxes are ``[x, y, w, h]`` in JSON and ``x1, y1, x2, y2`` in CSV unless ``box_format`` says
otherwise. Images of the file that are not among the given ones are skipped with a count (a
file may cover more images than one run segments). Categories may be any, seen in training or
not: the mask head is class-agnostic.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import Tensor

from deepmac.data.box_csv import read_box_csv
from deepmac.data.coco_fields import (
    entry_where,
    finite_number_field,
    finite_numbers_field,
    int_field,
    object_entry,
    text_field,
)
from deepmac.structures.boxes import box_xywh_to_xyxy, boxes_inside

__all__ = [
    "BoxPrompt",
    "BoxPrompts",
    "ImageMatcher",
    "assign_image_ids",
    "default_box_format",
    "load_box_prompts",
    "warn_if_wrong_box_format",
]

logger = logging.getLogger(__name__)


def default_box_format(path: str | Path) -> str:
    """``xyxy`` for a ``.csv`` file, COCO's ``xywh`` for JSON."""
    return "xyxy" if Path(path).suffix.lower() == ".csv" else "xywh"


@dataclass
class BoxPrompt:
    """The boxes of one image. ``boxes`` ``(N, 4)`` float32 xyxy; ``category_ids``,
    ``scores`` ``(N,)`` (NaN where the file gives none); ``labels`` N display strings;
    ``segmentations`` N ground-truth COCO segmentations (None where the file has none);
    ``frame`` the ``(H, W)`` an instances JSON gives the image (the frame the boxes were drawn
    in), None otherwise."""

    image_id: int
    boxes: Tensor
    category_ids: Tensor
    scores: Tensor
    labels: list[str]
    segmentations: list[Any] = field(default_factory=list)
    frame: tuple[int, int] | None = None

    def valid(self, height: int, width: int, source: str = "") -> BoxPrompt:
        """Boxes clipped to the image; boxes left with no area are dropped with one warning (a
        file's other boxes are still worth segmenting; the API refuses such boxes instead:
        ``check_prompt_boxes``). The one check a file's boxes pass."""
        clipped, keep = boxes_inside(self.boxes, (height, width))
        if not keep.all():
            logger.warning(
                "%s image %d: %d box(es) with no area inside the %dx%d image skipped",
                source,
                self.image_id,
                int((~keep).sum()),
                width,
                height,
            )
        kept = keep.tolist()
        return BoxPrompt(
            self.image_id,
            clipped[keep],
            self.category_ids[keep],
            self.scores[keep],
            [label for label, k in zip(self.labels, kept, strict=True) if k],
            [s for s, k in zip(self.segmentations, kept, strict=True) if k],
            self.frame,
        )


@dataclass
class BoxPrompts:
    """What a boxes file holds for the given images.

    Attributes:
        prompts: image name -> its boxes (images without boxes are absent).
        image_ids: image name -> COCO image id, for every given image: the file's id where it
            names the image, else the numeric file stem, else the next free number.
        categories: ``[{"id", "name"}]`` of the file (an instances JSON's own list; for
            results and CSV the ids and labels seen).
        crowd: image name -> the file's crowd annotations of that image, as they are.
        ground_truth: the file is an instances JSON (its segmentations are ground truth).
    """

    prompts: dict[str, BoxPrompt]
    image_ids: dict[str, int]
    categories: list[dict[str, Any]]
    crowd: dict[str, list[dict[str, Any]]]
    ground_truth: bool


class ImageMatcher:
    """Finds the given image a boxes file means: by file name first (the image whose relative
    path the name ends with, else the only image with that base name), then by numeric id
    (the file stem as a number: ``000000000139.jpg`` is 139).

    Args:
        names: the images' names, relative POSIX paths as ``deepmac.cli.image_files`` gives.
    """

    def __init__(self, names: list[str]) -> None:
        self.by_base: dict[str, list[str]] = {}
        self.by_id: dict[int, str] = {}
        for name in names:
            path = PurePosixPath(name)
            self.by_base.setdefault(path.name, []).append(name)
            if path.stem.isdigit():
                self.by_id.setdefault(int(path.stem), name)

    def match(self, file_name: str | None = None, image_id: int | None = None) -> str | None:
        """The image named ``file_name`` or numbered ``image_id``, or None. A ``file_name``
        with folders matches the image whose relative path it ends with."""
        if file_name:
            parts = PurePosixPath(file_name.replace("\\", "/")).parts
            candidates = self.by_base.get(parts[-1], []) if parts else []
            ending = [
                n
                for n in candidates
                if parts[-len(PurePosixPath(n).parts) :] == PurePosixPath(n).parts
            ]
            if len(ending) == 1:
                return ending[0]
            if len(candidates) == 1:
                return candidates[0]
            stem = PurePosixPath(parts[-1]).stem if parts else ""
            if image_id is None and stem.isdigit():
                image_id = int(stem)
        return self.by_id.get(image_id) if image_id is not None else None


@dataclass
class _Entry:
    """One box of a file, checked: ``bbox`` in the file's box format."""

    image: str
    bbox: list[float]
    category_id: int
    score: float | None
    segmentation: Any = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"boxes file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _box_fields(entry: dict, where: str, box_format: str) -> tuple[list[float], int, float | None]:
    """``bbox``, ``category_id`` (0 when absent) and ``score`` (None when absent) of an entry."""
    meaning = "[x, y, w, h]" if box_format == "xywh" else "[x1, y1, x2, y2]"
    bbox = finite_numbers_field(entry, "bbox", where, length=4, meaning=meaning)
    category_id = int_field(entry, "category_id", where) if "category_id" in entry else 0
    score = finite_number_field(entry, "score", where) if "score" in entry else None
    return bbox, category_id, score


def _from_instances(
    data: dict, path: Path, matcher: ImageMatcher, box_format: str, skipped: dict[str, None]
) -> tuple[list[_Entry], dict[str, int], dict[str, tuple[int, int]], list[dict], dict]:
    """Entries, ``name -> id``, ``name -> (H, W)``, categories and crowd annotations of an
    instances JSON."""
    for section in ("images", "annotations", "categories"):
        if not isinstance(data.get(section, []), list):
            found = type(data[section]).__name__
            raise ValueError(f"{path}: '{section}' must be a list, found {found}")
    id_to_name: dict[int, str] = {}
    ids: dict[str, int] = {}
    all_ids: set[int] = set()
    frames: dict[str, tuple[int, int]] = {}
    for k, image in enumerate(data["images"]):
        where = entry_where(path, "images", k)
        image_id = int_field(object_entry(image, where), "id", where)
        all_ids.add(image_id)
        file_name = text_field(image, "file_name", where)
        name = matcher.match(file_name, image_id)
        if name is None:
            skipped[file_name] = None
            continue
        id_to_name[image_id] = name
        ids[name] = image_id
        if "height" in image or "width" in image:
            frames[name] = (
                int_field(image, "height", where, minimum=1),
                int_field(image, "width", where, minimum=1),
            )
    categories = []
    for k, category in enumerate(data.get("categories", [])):
        where = entry_where(path, "categories", k)
        category_id = int_field(object_entry(category, where), "id", where)
        categories.append({"id": category_id, "name": text_field(category, "name", where)})
    entries, crowd = [], {}
    for k, annotation in enumerate(data["annotations"]):
        where = entry_where(path, "annotations", k)
        image_id = int_field(object_entry(annotation, where), "image_id", where)
        name = id_to_name.get(image_id)
        if name is None:
            if image_id not in all_ids:
                raise ValueError(
                    f"{where} field 'image_id': expected the id of an entry of 'images', "
                    f"found {image_id}"
                )
            continue  # an image skipped above
        if annotation.get("iscrowd", 0):  # crowd regions are no objects to segment
            crowd.setdefault(name, []).append(annotation)
            continue
        labelled = f"{where} (image id {image_id}, {name})"
        bbox, category_id, score = _box_fields(annotation, labelled, box_format)
        entries.append(_Entry(name, bbox, category_id, score, annotation.get("segmentation")))
    return entries, ids, frames, categories, crowd


def _from_results(
    data: list, path: Path, matcher: ImageMatcher, box_format: str, skipped: dict[str, None]
) -> tuple[list[_Entry], dict[str, int]]:
    """Entries and ``name -> id`` (numeric ids only) of a results JSON. Every entry is
    checked, also those of images not given: a broken file is refused as a whole."""
    entries, ids = [], {}
    for k, entry in enumerate(data):
        where = f"{path}: entry {k}"
        object_entry(entry, where)
        if isinstance(entry.get("image_id"), str):
            key = text_field(entry, "image_id", where)
            name = matcher.match(key)
            image = name or key
        else:
            image_id = int_field(entry, "image_id", where)
            key, name = f"id {image_id}", matcher.match(image_id=image_id)
            image = f"image id {image_id}" + (f", {name}" if name else "")
            if name is not None:
                ids[name] = image_id
        bbox, category_id, score = _box_fields(entry, f"{where} ({image})", box_format)
        if name is None:
            skipped[key] = None
            continue
        entries.append(_Entry(name, bbox, category_id, score))
    return entries, ids


def _from_csv(
    path: Path, matcher: ImageMatcher, box_format: str, skipped: dict[str, None]
) -> tuple[list[_Entry], list[dict]]:
    """Entries and categories of a CSV file: integer labels are category ids, other labels
    names numbered in order of appearance after the largest integer label (from 1)."""
    rows = read_box_csv(path, box_format)
    first = max((int(r.label) for r in rows if r.label.isdigit()), default=0) + 1
    names: dict[str, int] = {}
    for row in rows:
        if not row.label.isdigit() and row.label not in names:
            names[row.label] = first + len(names)
    entries = []
    for row in rows:
        name = matcher.match(row.image)
        if name is None:
            skipped[row.image] = None
            continue
        category_id = int(row.label) if row.label.isdigit() else names[row.label]
        entries.append(_Entry(name, list(row.box), category_id, row.score))
    numbered = sorted({e.category_id for e in entries} - set(names.values()))
    categories = [{"id": i, "name": n} for n, i in names.items()]
    return entries, categories + [{"id": i, "name": str(i)} for i in numbered]


def assign_image_ids(names: list[str], ids: dict[str, int]) -> dict[str, int]:
    """COCO image ids of the images ``names``: ``ids`` (the ids a file gives), completed with
    the numeric file stem where it is free (``000000000139.jpg`` is 139), else the next free
    number."""
    out = dict(ids)
    used = set(out.values())
    for name in names:
        stem = PurePosixPath(name).stem
        if name not in out and stem.isdigit() and int(stem) not in used:
            out[name] = int(stem)
            used.add(int(stem))
    free = max(used, default=0) + 1
    for name in names:
        if name not in out:
            out[name] = free
            free += 1
    return {name: out[name] for name in names}


def load_box_prompts(
    path: str | Path, image_names: list[str], *, box_format: str | None = None
) -> BoxPrompts:
    """Read box prompts and match them to the given images.

    Args:
        path: COCO instances JSON, COCO results JSON, or CSV (by the ``.csv`` suffix).
        image_names: the images to segment, as relative POSIX paths (base names for files
            given one by one).
        box_format: ``"xyxy"`` or ``"xywh"``; None is ``default_box_format(path)``.

    Returns:
        The prompts of the matched images (see ``BoxPrompts``).

    Raises:
        ValueError: malformed JSON, CSV or entries (the message names the file, the entry or
            line, its image and the field), or no image of the file among ``image_names``.
    """
    path = Path(path)
    box_format = box_format or default_box_format(path)
    matcher = ImageMatcher(image_names)
    skipped: dict[str, None] = {}  # image keys of the file not given (an ordered set)
    file = _read_entries(path, matcher, box_format, skipped)
    matched = {e.image for e in file.entries} | set(file.ids)
    if skipped and not matched:
        raise ValueError(
            f"{path}: none of its {len(skipped)} image(s) (e.g. {next(iter(skipped))!r}) is "
            f"among the {len(image_names)} given image(s) (e.g. {sorted(image_names)[0]!r}); "
            f"expected the same file names, or files named by numeric id"
        )
    if skipped:
        logger.info(
            "%s: %d image(s) of the file are not among the given images, skipped (e.g. %s)",
            path,
            len(skipped),
            ", ".join(list(skipped)[:3]),
        )
    image_ids = assign_image_ids(image_names, file.ids)
    prompts = _group_prompts(file, image_ids, box_format)
    return BoxPrompts(prompts, image_ids, file.categories, file.crowd, file.ground_truth)


@dataclass
class _FileEntries:
    """What ``_read_entries`` found in a boxes file: its entries of the given images, and (an
    instances JSON) their ids, frames, crowd annotations and the categories."""

    entries: list[_Entry]
    categories: list[dict[str, Any]]
    ids: dict[str, int] = field(default_factory=dict)
    frames: dict[str, tuple[int, int]] = field(default_factory=dict)
    crowd: dict[str, list[dict]] = field(default_factory=dict)
    ground_truth: bool = False


def _read_entries(
    path: Path, matcher: ImageMatcher, box_format: str, skipped: dict[str, None]
) -> _FileEntries:
    """The entries of a CSV, COCO results or COCO instances file (by suffix, then shape)."""
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise FileNotFoundError(f"boxes file not found: {path}")
        return _FileEntries(*_from_csv(path, matcher, box_format, skipped))
    data = _read_json(path)
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        entries, ids, frames, categories, crowd = _from_instances(
            data, path, matcher, box_format, skipped
        )
        return _FileEntries(entries, categories, ids, frames, crowd, ground_truth=True)
    if isinstance(data, list):
        entries, ids = _from_results(data, path, matcher, box_format, skipped)
        seen = sorted({e.category_id for e in entries})
        return _FileEntries(entries, [{"id": i, "name": str(i)} for i in seen], ids)
    found = sorted(data)[:5] if isinstance(data, dict) else type(data).__name__
    raise ValueError(
        f"{path}: expected a COCO instances JSON (with 'images' and 'annotations'), a "
        f"COCO results JSON (a list of detections) or a .csv file, found {found}"
    )


def _group_prompts(
    file: _FileEntries, image_ids: dict[str, int], box_format: str
) -> dict[str, BoxPrompt]:
    """One ``BoxPrompt`` per image of the entries, boxes as xyxy."""
    names = {c["id"]: c["name"] for c in file.categories}
    grouped: dict[str, list[_Entry]] = {}
    for entry in file.entries:
        grouped.setdefault(entry.image, []).append(entry)
    prompts = {}
    for name, group in grouped.items():
        boxes = torch.tensor([e.bbox for e in group], dtype=torch.float32).reshape(-1, 4)
        prompts[name] = BoxPrompt(
            image_ids[name],
            box_xywh_to_xyxy(boxes) if box_format == "xywh" else boxes,
            torch.tensor([e.category_id for e in group], dtype=torch.long),
            torch.tensor([math.nan if e.score is None else e.score for e in group]),
            [names.get(e.category_id, str(e.category_id)) for e in group],
            [e.segmentation for e in group],
            file.frames.get(name),
        )
    return prompts


def warn_if_wrong_box_format(
    prompts: dict[str, BoxPrompt],
    sizes: dict[str, tuple[int, int]],
    source: str,
    box_format: str,
) -> None:
    """One warning when many boxes (a quarter or more) do not fit the box format they were
    read as, whose masks would be wrong without any error:

    * read as ``[x, y, w, h]``, they run past their image's edge: likely ``[x1, y1, x2, y2]``;
    * read as ``[x1, y1, x2, y2]``, they have ``x2 <= x1`` or ``y2 <= y1``: likely
      ``[x, y, w, h]``.

    Args:
        prompts: image name -> boxes (xyxy), as from ``load_box_prompts``.
        sizes: image name -> ``(H, W)`` of the image the boxes are drawn on.
        source: the boxes file, for the message.
        box_format: the format the boxes were read as.
    """
    wrong = total = 0
    for name, prompt in prompts.items():
        height, width = sizes[name]
        boxes = prompt.boxes  # (N, 4) xyxy
        if box_format == "xywh":
            # One pixel of slack: exporters round boxes that touch the edge.
            bad = (boxes[:, 2] > width + 1) | (boxes[:, 3] > height + 1)
        else:
            bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        wrong += int(bad.sum())
        total += len(boxes)
    if not wrong or 4 * wrong < total:
        return
    if box_format == "xywh":
        logger.warning(
            "%s: %d of %d boxes run past their image's edge as [x, y, width, height]; are these "
            "xyxy? COCO boxes are [x, y, width, height]; pass --box-format xyxy if not",
            source,
            wrong,
            total,
        )
    else:
        logger.warning(
            "%s: %d of %d boxes have x2 <= x1 or y2 <= y1 as [x1, y1, x2, y2]; are these "
            "[x, y, width, height]? pass --box-format xywh",
            source,
            wrong,
            total,
        )
