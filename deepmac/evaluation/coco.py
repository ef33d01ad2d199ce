"""COCO box and mask AP with pycocotools, overall and per class split (VOC / non-VOC).

The paper's "non-VOC mask mAP" is the mean over the non-VOC categories of the per-category
AP@[.5:.95], on all val2017 images (reference/official-implementation.md, section 6). COCOeval
evaluates every category independently, so we run ``evaluate()``/``accumulate()`` once per IoU
type and average the precision array over each split's categories; this equals rerunning
COCOeval with ``params.catIds`` set to the split (tested). All metrics are fractions in [0, 1];
NaN means the split has no ground truth in that area range.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deepmac.data.class_splits import resolve_split
from deepmac.data.coco_fields import (
    entry_where,
    finite_number_field,
    finite_numbers_field,
    int_field,
    object_entry,
    text_field,
)
from deepmac.evaluation.results import (
    ArrayLike,
    check_segmentation,
    instances_to_coco_results,
    load_coco_results,
    validate_coco_results,
)

if TYPE_CHECKING:
    from pycocotools.coco import COCO

IOU_TYPES = ("segm", "bbox")
DEFAULT_SPLITS: dict[str, str] = {"all": "all", "voc": "voc", "nonvoc": "nonvoc"}
#: metric name -> (IoU threshold or None for .50:.95, area range label); maxDets is 100.
METRICS: dict[str, tuple[float | None, str]] = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "APs": (None, "small"),
    "APm": (None, "medium"),
    "APl": (None, "large"),
}


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    """pycocotools prints progress to stdout; swallow it unless ``verbose``."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_coco_gt(gt: COCO | str | os.PathLike, verbose: bool = False) -> COCO:
    """Return a pycocotools ``COCO`` for a ground-truth instances JSON (or pass one through).

    Raises:
        ValueError: if the file is not valid JSON or lacks ``images``, ``annotations`` or
            ``categories``.
    """
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    try:
        with open(gt) as f:
            dataset = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{gt}: malformed COCO ground-truth JSON ({err})") from None
    keys = ("images", "annotations", "categories")
    if not isinstance(dataset, dict) or any(k not in dataset for k in keys):
        found = sorted(dataset) if isinstance(dataset, dict) else type(dataset).__name__
        raise ValueError(f"{gt}: COCO ground truth must be a dict with keys {keys}, found {found}")
    _check_gt_fields(dataset, str(gt))
    coco = COCO()
    coco.dataset = dataset
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _check_gt_fields(dataset: dict[str, Any], source: str) -> None:
    """The fields pycocotools reads from a ground truth, typed, so that a bad entry is one
    error naming it (pycocotools raises a bare ``KeyError`` or scores garbage)."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset[key], list):
            found = type(dataset[key]).__name__
            raise ValueError(f"{source}: '{key}' must be a list, found {found}")
    image_ids = set()
    for k, image in enumerate(dataset["images"]):
        where = entry_where(source, "images", k)
        image_ids.add(int_field(object_entry(image, where), "id", where))
        for size in ("height", "width"):  # masks are decoded at this size
            int_field(image, size, where, minimum=1)
    categories = set()
    for k, category in enumerate(dataset["categories"]):
        where = entry_where(source, "categories", k)
        categories.add(int_field(object_entry(category, where), "id", where))
        text_field(category, "name", where)
    for k, ann in enumerate(dataset["annotations"]):
        where = entry_where(source, "annotations", k)
        int_field(object_entry(ann, where), "id", where)
        image_id = int_field(ann, "image_id", where)
        category_id = int_field(ann, "category_id", where)
        if image_id not in image_ids:
            raise ValueError(
                f"{where} field 'image_id': expected an id of 'images', found {image_id}"
            )
        if category_id not in categories:
            raise ValueError(
                f"{where} field 'category_id': expected an id of 'categories', found {category_id}"
            )
        finite_numbers_field(ann, "bbox", where, length=4, meaning="[x, y, w, h]")
        finite_number_field(ann, "area", where)
        if "segmentation" in ann:
            check_segmentation(ann["segmentation"], where)


def _segmentation_to_rle(segm: Any, height: int, width: int, where: str) -> dict[str, Any]:
    """Compressed RLE (bytes counts) of a result's polygon / RLE segmentation."""
    from pycocotools import mask as mask_util

    if isinstance(segm, list):  # polygons
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        raise ValueError(f"{where}: segmentation must be RLE {{size, counts}} or polygons")
    if list(segm["size"]) != [height, width]:
        raise ValueError(
            f"{where}: mask size {list(segm['size'])} does not match the image's "
            f"[height, width] = {[height, width]}; paste masks into the original image frame"
        )
    if isinstance(segm["counts"], list):  # uncompressed RLE
        return mask_util.frPyObjects(segm, height, width)
    counts = segm["counts"]
    counts = counts.encode() if isinstance(counts, str) else counts
    return {"size": [height, width], "counts": counts}


def _results_to_coco(
    gt: COCO, results: Sequence[dict[str, Any]], iou_type: str, verbose: bool = False
) -> COCO:
    """Build the detections ``COCO`` object; replaces ``COCO.loadRes``.

    ``loadRes`` crashes on an empty list, prints, mutates its input, and for results with both
    ``bbox`` and ``segmentation`` takes the *box* area as the mask's area (which shifts the
    small/medium/large buckets of mask AP; detectron2 drops ``bbox`` for the same reason). Here
    the mask area and box come from the RLE for ``segm``, and the input is left untouched.
    """
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO

    unknown_images = {r["image_id"] for r in results} - set(gt.imgs)
    if unknown_images:
        raise ValueError(
            f"results name image ids {sorted(unknown_images)[:10]} that are not in the ground truth"
        )
    unknown_cats = {r["category_id"] for r in results} - set(gt.cats)
    if unknown_cats:
        raise ValueError(
            f"results name category ids {sorted(unknown_cats)[:10]} that the ground truth does "
            f"not define (expected COCO category ids such as {sorted(gt.cats)[:5]}, not "
            "contiguous ids)"
        )
    anns = []
    for i, result in enumerate(results):
        ann = {
            "id": i + 1,
            "image_id": result["image_id"],
            "category_id": result["category_id"],
            "score": float(result["score"]),
            "iscrowd": 0,
        }
        where = f"result {i} (image {result['image_id']})"
        if iou_type == "segm":
            if "segmentation" not in result:
                raise ValueError(f"{where}: segm evaluation needs 'segmentation' in every result")
            height, width = (gt.imgs[result["image_id"]][k] for k in ("height", "width"))
            rle = _segmentation_to_rle(result["segmentation"], height, width, where)
            ann["segmentation"] = rle
            ann["area"] = float(mask_util.area(rle))
            ann["bbox"] = mask_util.toBbox(rle).tolist()
        else:
            if "bbox" not in result or len(result["bbox"]) != 4:
                raise ValueError(f"{where}: bbox evaluation needs a 4-value 'bbox' in every result")
            ann["bbox"] = [float(v) for v in result["bbox"]]
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        anns.append(ann)
    dt = COCO()
    dt.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": list(gt.dataset["categories"]),
        "annotations": anns,
    }
    with _quiet(verbose):
        dt.createIndex()
    return dt


def resolve_coco_splits(
    gt: COCO, splits: Mapping[str, str | Iterable[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Map split names to the COCO category ids of the split that have ground truth in ``gt``.

    Args:
        gt: ground truth.
        splits: name -> split spec accepted by ``deepmac.data.class_splits.resolve_split``
            (``"voc"``, ``"nonvoc"``, ``"all"``, or ids). Defaults to ``DEFAULT_SPLITS``.
    """
    present = {ann["category_id"] for ann in gt.dataset["annotations"]}
    known = sorted(gt.getCatIds())
    specs = DEFAULT_SPLITS if splits is None else splits
    return {
        name: tuple(c for c in resolve_split(spec, known_ids=known) if c in present)
        for name, spec in specs.items()
    }


def _split_metrics(
    precision: np.ndarray, params: Any, cat_indices: Sequence[int]
) -> dict[str, float]:
    """Mean of valid (> -1) precision entries over a category subset, as ``COCOeval.summarize``.

    Args:
        precision: ``COCOeval.eval["precision"]``, float ``(T, R, K, A, M)``.
        params: the ``COCOeval.params`` that produced it.
        cat_indices: indices into the K axis.
    """
    max_det_index = list(params.maxDets).index(100)
    metrics = {}
    for name, (iou_thr, area) in METRICS.items():
        p = precision[:, :, list(cat_indices), params.areaRngLbl.index(area), max_det_index]
        if iou_thr is not None:
            p = p[np.isclose(params.iouThrs, iou_thr)]
        valid = p[p > -1]
        metrics[name] = float(valid.mean()) if valid.size else float("nan")
    return metrics


def evaluate_coco(
    gt: COCO | str | os.PathLike,
    results: Sequence[dict[str, Any]] | str | os.PathLike,
    *,
    iou_types: Sequence[str] = IOU_TYPES,
    splits: Mapping[str, str | Iterable[int]] | None = None,
    image_ids: Iterable[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO AP, AP50, AP75, APs, APm, APl per IoU type and class split.

    Args:
        gt: ground-truth instances JSON path or ``COCO`` object.
        results: COCO result dicts (see ``instances_to_coco_results``) or a results JSON path.
            An empty list scores 0 AP on every split with ground truth.
        iou_types: subset of ``("segm", "bbox")``.
        splits: split name -> ``"voc"`` / ``"nonvoc"`` / ``"all"`` / COCO ids; defaults to
            ``{"all": "all", "voc": "voc", "nonvoc": "nonvoc"}``. Each split is restricted to the
            categories with ground truth in ``gt``.
        image_ids: evaluate on these images only (e.g. the first images of a quick evaluation);
            default all images of ``gt``.
        verbose: let pycocotools print progress and the overall summary table.

    Returns:
        ``{"<iou_type>/<split>/<metric>": value}``, e.g. ``"segm/nonvoc/AP"``. Values are
        fractions in [0, 1]; NaN where the split has no ground truth (in that area range).

    Raises:
        ValueError: unknown IoU type, malformed results, or results naming unknown image or
            category ids.
    """
    from pycocotools.cocoeval import COCOeval

    bad = [t for t in iou_types if t not in IOU_TYPES]
    if bad:
        raise ValueError(f"iou_types must be among {IOU_TYPES}, got {list(iou_types)}")
    gt = load_coco_gt(gt, verbose=verbose)
    if isinstance(results, (str, os.PathLike)):
        results = load_coco_results(results)
    else:
        results = validate_coco_results(list(results))
    split_cats = resolve_coco_splits(gt, splits)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        dt = _results_to_coco(gt, results, iou_type, verbose)
        coco_eval = COCOeval(gt, dt, iouType=iou_type)
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(set(int(i) for i in image_ids))
        with _quiet(verbose):
            coco_eval.evaluate()
            coco_eval.accumulate()
            if verbose:
                coco_eval.summarize()
        cat_index = {c: k for k, c in enumerate(coco_eval.params.catIds)}
        for split, cat_ids in split_cats.items():
            indices = [cat_index[c] for c in cat_ids]
            split_metrics = _split_metrics(coco_eval.eval["precision"], coco_eval.params, indices)
            for name, value in split_metrics.items():
                metrics[f"{iou_type}/{split}/{name}"] = value
    return metrics


class CocoEvaluator:
    """Accumulates per-image detections and scores them with ``evaluate_coco`` (d2 style).

    Example::

        evaluator = CocoEvaluator("instances_val2017.json")
        for image_id, out in predictions:
            evaluator.process(image_id, out.boxes, out.scores, out.category_ids, out.masks)
        metrics = evaluator.evaluate()  # {"segm/nonvoc/AP": ..., ...}

    Args:
        gt: ground-truth JSON path or ``COCO`` object, loaded once.
        iou_types: as ``evaluate_coco``.
        splits: as ``evaluate_coco``.
    """

    def __init__(
        self,
        gt: COCO | str | os.PathLike,
        *,
        iou_types: Sequence[str] = IOU_TYPES,
        splits: Mapping[str, str | Iterable[int]] | None = None,
    ) -> None:
        self.gt = load_coco_gt(gt)
        self.iou_types = tuple(iou_types)
        self.splits = splits
        self.results: list[dict[str, Any]] = []
        self.image_ids: set[int] = set()

    def reset(self) -> None:
        """Forget the accumulated results."""
        self.results = []
        self.image_ids = set()

    def process(
        self,
        image_id: int,
        boxes_xyxy: ArrayLike,
        scores: ArrayLike,
        category_ids: ArrayLike,
        masks: ArrayLike | None = None,
    ) -> None:
        """Add one image's detections; arguments as ``instances_to_coco_results``.

        Raises:
            ValueError: if ``"segm"`` is evaluated but ``masks`` is None.
        """
        if masks is None and "segm" in self.iou_types:
            raise ValueError("masks are required when iou_types includes 'segm'")
        self.image_ids.add(int(image_id))
        self.results.extend(
            instances_to_coco_results(image_id, boxes_xyxy, scores, category_ids, masks)
        )

    def synchronize(self) -> None:
        """Under ``torch.distributed``, gather the results of every process (in rank order);
        a no-op alone."""
        from deepmac.engine.distributed import all_gather_object

        gathered = all_gather_object((self.results, self.image_ids))
        if len(gathered) == 1:
            return
        self.results = [r for results, _ in gathered for r in results]
        self.image_ids = set().union(*(ids for _, ids in gathered))

    def evaluate(self) -> dict[str, float]:
        """Score the images processed since the last ``reset``: only those, so an evaluation of
        the first images of a split is not charged for the rest (with none processed, every
        image counts, and everything is missed); see ``evaluate_coco``."""
        return evaluate_coco(
            self.gt,
            self.results,
            iou_types=self.iou_types,
            splits=self.splits,
            image_ids=self.image_ids or None,
        )
