"""COCO instance-segmentation dataset: JSON parsing, validation and per-item mask decoding.

This is the only place where COCO ``xywh`` boxes and COCO ``category_id`` enter the library; see
``deepmac.structures`` for the conventions every returned tensor follows.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from deepmac.data.class_splits import resolve_split
from deepmac.data.coco_fields import entry_where, int_field, object_entry, text_field
from deepmac.data.coco_rle import check_rle
from deepmac.data.images import read_image
from deepmac.structures.boxes import box_xywh_to_xyxy

__all__ = [
    "CocoInstances",
    "Target",
    "Transform",
    "decode_segmentations",
    "image_key",
    "image_keys",
    "load_coco_json",
]

#: Per-image target dict; keys are listed in ``CocoInstances.__getitem__``.
Target = dict[str, Any]
#: A joint transform: ``(image, target) -> (image, target)``.
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]

_REQUIRED_KEYS = ("images", "annotations", "categories")
_IMAGE_KEYS = ("id", "file_name", "height", "width")


def _mask_utils() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:  # pragma: no cover - pycocotools is a declared dependency
        raise ImportError(
            "decoding COCO masks needs pycocotools: pip install 'pycocotools>=2.0.6'"
        ) from err
    return mask_utils


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances JSON and check its top-level layout.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not valid JSON (with line/column), is not an object, or lacks
            one of ``images``, ``annotations``, ``categories``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: expected a JSON file at {path}")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} "
            f"(char {err.pos})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a JSON object at top level, found {type(data).__name__}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(
            f"{path}: COCO instances JSON must have keys {list(_REQUIRED_KEYS)}; missing {missing} "
            f"(found {sorted(data)})"
        )
    return data


def _check_segmentation(seg: Any, ann: dict[str, Any], image: dict[str, Any], where: str) -> bool:
    """Validate one ``segmentation`` field; returns whether it holds a mask at all."""
    if seg is None or (isinstance(seg, list) and not seg):
        return False
    if isinstance(seg, list):
        for polygon in seg:
            if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
                found = len(polygon) if isinstance(polygon, list) else type(polygon).__name__
                raise ValueError(
                    f"{where}: annotation id {ann.get('id')} (image id {image['id']}) has a "
                    f"polygon with {found} coordinates; expected an even number >= 6 "
                    "(at least 3 points)"
                )
        return True
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        expected = [image["height"], image["width"]]
        if list(seg["size"]) != expected:
            raise ValueError(
                f"{where}: annotation id {ann.get('id')} has an RLE of size {list(seg['size'])}, "
                f"expected [height, width] = {expected} of image id {image['id']}"
            )
        check_rle(seg, where)  # runs that do not add up would decode to stray memory
        return True
    raise ValueError(
        f"{where}: annotation id {ann.get('id')} has a segmentation of unknown form; expected a "
        f"list of polygons or an RLE dict with 'size' and 'counts', found {type(seg).__name__}"
    )


def decode_segmentations(segs: Sequence[Any], height: int, width: int) -> Tensor:
    """Decode polygons / compressed / uncompressed RLEs into bool ``(N, H, W)`` masks."""
    if not segs:
        return torch.zeros(0, height, width, dtype=torch.bool)
    mask_utils = _mask_utils()
    rles = []
    for seg in segs:
        if seg is None:  # instance without a mask: an all-False placeholder (has_mask is False)
            rles.append(mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F")))
        elif isinstance(seg, list):  # polygons: several parts of one object are merged
            rles.append(mask_utils.merge(mask_utils.frPyObjects(seg, height, width)))
        elif isinstance(seg["counts"], list):  # uncompressed RLE (COCO crowd regions)
            rles.append(mask_utils.frPyObjects(seg, height, width))
        else:  # compressed RLE; pycocotools accepts str or bytes counts
            rles.append({"size": list(seg["size"]), "counts": seg["counts"]})
    masks = mask_utils.decode(rles)  # (H, W, N) uint8, Fortran order
    return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1))).bool()


def image_key(image: dict[str, Any]) -> tuple[str, int, int]:
    """What identifies one image across annotation files: file name (without folders) and
    size. Image ids are no key: two files may number the same image differently (COCO's own
    subsets keep ids, user exports often renumber)."""
    return (Path(str(image["file_name"])).name, int(image["height"]), int(image["width"]))


def image_keys(ann_file: str | Path) -> set[tuple[str, int, int]]:
    """``image_key`` of every image entry of a COCO JSON (read, not validated further)."""
    data = load_coco_json(ann_file)
    where = str(ann_file)
    return {image_key(record) for record in _index_images(data["images"], where).values()}


def _index_images(images: list[Any], where: str) -> dict[int, dict[str, Any]]:
    """``image id -> {id, file_name, height, width, anns: []}``, checking keys and types."""
    if not isinstance(images, list):
        raise ValueError(f"{where}: 'images' must be a list, found {type(images).__name__}")
    index: dict[int, dict[str, Any]] = {}
    for k, img in enumerate(images):
        entry = entry_where(where, "images", k)
        object_entry(img, entry)
        missing = [key for key in _IMAGE_KEYS if key not in img]
        if missing:
            raise ValueError(f"{entry} lacks keys {missing}; expected {list(_IMAGE_KEYS)}")
        record = {
            "id": int_field(img, "id", entry),
            "file_name": text_field(img, "file_name", entry),
            "height": int_field(img, "height", entry, minimum=1),
            "width": int_field(img, "width", entry, minimum=1),
        }
        if record["id"] in index:
            raise ValueError(f"{entry}: image id {record['id']} appears twice in 'images'")
        index[record["id"]] = record | {"anns": []}
    return index


class _PackedRecords:
    """Per-image records pickled into one numpy byte buffer.

    Forked DataLoader workers then share the buffer's pages copy-on-write instead of touching
    millions of Python refcounts, which on full COCO would copy the whole index into every worker
    (detectron2's ``DatasetFromList(serialize=True)`` trick).
    """

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        blobs = [
            np.frombuffer(pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
            for r in records
        ]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._data = np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(memoryview(self._data[start : int(self._ends[index])]))


class CocoInstances(Dataset):
    """COCO-format instance segmentation with per-instance mask supervision flags.

    The JSON is parsed and validated once at construction; images and masks are decoded per
    item. Contiguous labels ``0..K-1`` follow the sorted COCO category ids of the file.

    Args:
        root: dataset folder holding ``annotations/instances_<split>.json`` and ``<split>/``.
        split: split name, e.g. ``"train2017"``.
        ann_file: explicit annotation JSON (overrides the one derived from ``root``/``split``).
        image_dir: explicit image folder (overrides ``root/<split>``).
        mask_split: categories with mask supervision: ``"voc"``, ``"nonvoc"``, ``"all"``, a
            comma-separated id string or an iterable of COCO category ids.
        transforms: joint transform applied to ``(image, target)``.
        min_box_size: boxes (after clipping to the image) whose width or height is ``<=`` this
            many pixels, or that are not finite, are dropped with one warning per dataset.
        skip_empty: drop images that keep no annotation at all (crowd regions count).
        exclude_images: ``image_key`` values of images to leave out (e.g. the evaluation
            images, when a training root holds some of them); ``excluded_file_names`` lists
            the file names left out.

    Attributes:
        category_ids: sorted COCO category ids; index = contiguous label.
        category_names: names in the same order.
        contiguous_to_category_id / category_id_to_contiguous: the two id mappings.
        mask_category_ids: COCO ids of the mask-supervised classes.
        num_dropped_boxes: how many degenerate annotations were dropped.
        num_instances: non-crowd instances kept; num_mask_instances: those of them with a
            segmentation of a mask-supervised class (what a mask head learns from).

    Raises:
        FileNotFoundError: missing annotation file, image folder or image file (all checked
            here, before any image is decoded).
        ValueError: malformed JSON or annotations (unknown image/category id, bad polygon, a
            field of the wrong type, ...), naming the entry and the field.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train2017",
        *,
        ann_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        mask_split: str | Iterable[int] = "all",
        transforms: Transform | None = None,
        min_box_size: float = 1.0,
        skip_empty: bool = False,
        exclude_images: Iterable[tuple[str, int, int]] = (),
    ) -> None:
        if root is None and (ann_file is None or image_dir is None):
            raise ValueError("CocoInstances needs root=, or both ann_file= and image_dir=")
        base = Path(root) if root is not None else Path()
        self.ann_file = Path(ann_file or base / "annotations" / f"instances_{split}.json")
        self.image_dir = Path(image_dir or base / split)
        self.split = split
        self.transforms = transforms
        self.min_box_size = float(min_box_size)
        data = load_coco_json(self.ann_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"image folder not found: expected a directory at {self.image_dir} "
                f"for {self.ann_file}"
            )
        self._init_categories(data["categories"])
        self.mask_category_ids = resolve_split(mask_split, known_ids=self.category_ids)
        mask_ids = set(self.mask_category_ids)
        #: (K,) bool, indexed by contiguous label: whether the class has mask supervision.
        self.class_has_mask = torch.tensor(
            [c in mask_ids for c in self.category_ids], dtype=torch.bool
        )
        records = self._build_records(data, skip_empty)
        exclude = set(exclude_images)
        self.excluded_file_names: list[str] = [
            r["file_name"] for r in records if image_key(r) in exclude
        ]
        if exclude:
            records = [r for r in records if image_key(r) not in exclude]
        self._check_image_files(records)
        self.image_ids: list[int] = [r["id"] for r in records]
        anns = [a for r in records for a in r["anns"] if not a["iscrowd"]]
        mask_labels = {label for label, m in enumerate(self.class_has_mask.tolist()) if m}
        self.num_instances = len(anns)
        self.num_mask_instances = sum(
            a["segmentation"] is not None and a["label"] in mask_labels for a in anns
        )
        self._records = _PackedRecords(records)

    # ------------------------------------------------------------------ parsing
    def _check_image_files(self, records: list[dict[str, Any]]) -> None:
        """Every image file exists, checked now rather than at the step that first draws it
        (after hours of training, maybe after a checkpoint). One directory listing, not one
        ``stat`` per image: COCO train2017 has 118k files."""
        with os.scandir(self.image_dir) as entries:
            listed = {e.name for e in entries if e.is_file()}
        missing = [
            r["file_name"]
            for r in records
            if r["file_name"] not in listed and not (self.image_dir / r["file_name"]).is_file()
        ]
        if missing:
            shown = ", ".join(str(self.image_dir / name) for name in missing[:5])
            raise FileNotFoundError(
                f"{self.ann_file}: {len(missing)} of {len(records)} image file(s) not found "
                f"(first: {shown}); expected every image of the annotation file in "
                f"{self.image_dir}"
            )

    def _init_categories(self, categories: list[dict[str, Any]]) -> None:
        where = str(self.ann_file)
        if not isinstance(categories, list):
            raise ValueError(
                f"{where}: 'categories' must be a list, found {type(categories).__name__}"
            )
        ids: dict[int, str] = {}
        for k, cat in enumerate(categories):
            entry = entry_where(where, "categories", k)
            category_id = int_field(object_entry(cat, entry), "id", entry)
            name = text_field(cat, "name", entry)
            if category_id in ids:
                raise ValueError(f"{entry}: category id {category_id} is defined twice")
            ids[category_id] = name
        if not ids:
            raise ValueError(f"{where}: 'categories' is empty; expected at least one category")
        self.category_ids: tuple[int, ...] = tuple(sorted(ids))
        self.category_names: tuple[str, ...] = tuple(ids[c] for c in self.category_ids)
        self.contiguous_to_category_id: dict[int, int] = dict(enumerate(self.category_ids))
        self.category_id_to_contiguous: dict[int, int] = {
            c: i for i, c in enumerate(self.category_ids)
        }

    def _build_records(self, data: dict[str, Any], skip_empty: bool) -> list[dict[str, Any]]:
        where = str(self.ann_file)
        images = _index_images(data["images"], where)
        if not isinstance(data["annotations"], list):
            found = type(data["annotations"]).__name__
            raise ValueError(f"{where}: 'annotations' must be a list, found {found}")
        anns = [
            self._check_annotation(ann, images, entry_where(where, "annotations", k))
            for k, ann in enumerate(data["annotations"])
        ]
        # One vectorised pass: COCO xywh -> xyxy, clipped to each annotation's image.
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes = box_xywh_to_xyxy(xywh)
        limits = torch.tensor(
            [[images[a["image_id"]][k] for k in ("width", "height")] for a in anns],
            dtype=torch.float64,
        ).reshape(-1, 1, 2)
        boxes = torch.minimum(boxes.reshape(-1, 2, 2).clamp(min=0), limits).reshape(-1, 4)
        sides = boxes[:, 2:] - boxes[:, :2]
        # NaN compares False, so non-finite boxes fail this test too.
        keep = (sides > self.min_box_size).all(dim=1) & boxes.isfinite().all(dim=1)
        for ann, box, kept in zip(anns, boxes.tolist(), keep.tolist(), strict=True):
            if kept:
                images[ann["image_id"]]["anns"].append(
                    {
                        "box": tuple(box),
                        "label": self.category_id_to_contiguous[ann["category_id"]],
                        "iscrowd": bool(ann.get("iscrowd", 0)),
                        "segmentation": ann["segmentation"] if ann["has_seg"] else None,
                    }
                )
        self.num_dropped_boxes = len(anns) - int(keep.sum())
        if self.num_dropped_boxes:
            warnings.warn(
                f"{where}: dropped {self.num_dropped_boxes} annotation(s) with non-finite boxes "
                f"or a side <= {self.min_box_size} px",
                stacklevel=3,
            )
        records = [images[i] for i in sorted(images)]
        return [r for r in records if r["anns"]] if skip_empty else records

    def _check_annotation(
        self, ann: Any, images: dict[int, dict[str, Any]], where: str
    ) -> dict[str, Any]:
        """Validate one annotation (``where`` names its file and index); returns the fields
        kept, with ``has_seg`` added."""
        object_entry(ann, where)
        image_id = int_field(ann, "image_id", where)
        image = images.get(image_id)
        if image is None:
            raise ValueError(
                f"{where}: annotation id {ann.get('id')} points to image id "
                f"{image_id}, which is not in 'images'"
            )
        category_id = int_field(ann, "category_id", where)
        if category_id not in self.category_id_to_contiguous:
            raise ValueError(
                f"{where}: annotation id {ann.get('id')} has category id "
                f"{category_id}, expected one of the ids in 'categories' "
                f"{list(self.category_ids)}"
            )
        bbox = ann.get("bbox")
        try:
            bbox = [float(v) for v in bbox]  # type: ignore[union-attr]
            if len(bbox) != 4:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: annotation id {ann.get('id')} needs bbox [x, y, w, h] of 4 numbers, "
                f"found {ann.get('bbox')!r}"
            ) from None
        return {
            "image_id": image_id,
            "category_id": category_id,
            "iscrowd": ann.get("iscrowd", 0),
            "bbox": bbox,
            "segmentation": ann.get("segmentation"),
            "has_seg": _check_segmentation(ann.get("segmentation"), ann, image, where),
        }

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self) -> int:
        """``K``, the number of categories in the annotation file."""
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self._records)

    def image_info(self, index: int) -> dict[str, Any]:
        """``id``, ``file_name``, ``height``, ``width`` of image ``index`` (no decoding)."""
        return {k: self._records[index][k] for k in _IMAGE_KEYS}

    def instance_labels(self, index: int) -> tuple[Tensor, Tensor]:
        """Contiguous labels of image ``index`` without decoding anything.

        Returns:
            int64 ``(N,)`` labels of the non-crowd instances and int64 ``(M,)`` of the crowd
            regions, as ``__getitem__`` would return them before transforms.
        """
        anns = self._records[index]["anns"]
        return tuple(
            torch.tensor([a["label"] for a in anns if a["iscrowd"] == crowd], dtype=torch.int64)
            for crowd in (False, True)
        )  # type: ignore[return-value]

    def load_image(self, index: int) -> Tensor:
        """Decode image ``index`` as float32 ``(3, H, W)`` RGB in ``0..255``, in the frame of
        the JSON's width and height: the displayed (EXIF-oriented) one when its size matches,
        else the stored one (``deepmac.data.images.read_image``).

        Raises:
            FileNotFoundError: the file is missing (the message names the path).
            ValueError: the file cannot be decoded or neither frame has the JSON's size.
        """
        return self._read_image(self._records[index])

    def _read_image(self, record: dict[str, Any]) -> Tensor:
        # The frame the annotations were drawn in: the displayed (EXIF-transposed) one when
        # the JSON's size is its size, else the stored one (deepmac.data.images).
        array = read_image(
            self.image_dir / record["file_name"],
            frame=(record["height"], record["width"]),
            source=f"{self.ann_file} (image id {record['id']})",
        )
        return torch.from_numpy(array).permute(2, 0, 1).float()  # (3, H, W)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        """One image and its target.

        Returns:
            ``image``: float32 ``(3, H, W)`` RGB in ``0..255`` (normalisation is the model's job).
            ``target`` with keys

            * ``boxes`` float32 ``(N, 4)`` xyxy pixels, ``labels`` int64 ``(N,)`` in ``0..K-1``,
              ``gt_masks`` bool ``(N, H, W)``, ``has_mask`` bool ``(N,)`` (class is mask-supervised
              and the annotation has a segmentation) -- non-crowd instances only;
            * ``crowd_boxes`` float32 ``(M, 4)``, ``crowd_labels`` int64 ``(M,)``, ``crowd_masks``
              bool ``(M, H, W)``: ``iscrowd=1`` regions, ignored in training, kept for evaluation;
            * ``image_id`` int; ``orig_size`` ``(H, W)`` as read; ``size`` ``(H, W)`` of the valid
              (unpadded) image content in the current frame.
        """
        record = self._records[index]
        image = self._read_image(record)
        height, width = record["height"], record["width"]
        target: Target = {
            "image_id": int(record["id"]),
            "orig_size": (height, width),
            "size": (height, width),
        }
        for crowd, prefix in ((False, ""), (True, "crowd_")):
            anns = [a for a in record["anns"] if a["iscrowd"] == crowd]
            boxes = torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([a["label"] for a in anns], dtype=torch.int64)
            target[f"{prefix}boxes"] = boxes
            target[f"{prefix}labels"] = labels
            masks = decode_segmentations([a["segmentation"] for a in anns], height, width)
            target["crowd_masks" if crowd else "gt_masks"] = masks
            if not crowd:
                has_seg = torch.tensor(
                    [a["segmentation"] is not None for a in anns], dtype=torch.bool
                )
                target["has_mask"] = self.class_has_mask[labels] & has_seg
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(ann_file={str(self.ann_file)!r}, images={len(self)}, "
            f"classes={self.num_classes}, mask_classes={len(self.mask_category_ids)})"
        )
