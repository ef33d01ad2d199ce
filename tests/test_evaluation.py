"""Tests of deepmac.evaluation: results writer, COCO AP per split, box-prompted mIoU.

The sanity checks on real data score the ground truth as a prediction (masks decoded from the
COCO polygons, re-encoded by our writer, written to disk and read back): AP and mIoU must be 1.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from deepmac.data.class_splits import NONVOC_CATEGORY_IDS, VOC_CATEGORY_IDS
from deepmac.evaluation import (
    CocoEvaluator,
    MaskIoUEvaluator,
    evaluate_coco,
    instances_to_coco_results,
    load_coco_gt,
    load_coco_results,
    matched_mask_iou,
    resolve_coco_splits,
    write_coco_results,
)
from deepmac.structures import box_xywh_to_xyxy

# pycocotools' mask.decode trips a NumPy 2 copy-keyword DeprecationWarning (not ours).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SPLITS = ("all", "voc", "nonvoc")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ----------------------------------------------------------------------------- helpers


def _image_instances(coco: COCO, image_id: int) -> tuple[torch.Tensor, np.ndarray, list[int]]:
    """Non-crowd GT of one image: xyxy boxes (N, 4), bool masks (N, H, W), COCO ids."""
    anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
    image = coco.imgs[image_id]
    boxes = box_xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns], dtype=torch.float64))
    masks = np.zeros((len(anns), image["height"], image["width"]), dtype=bool)
    for i, ann in enumerate(anns):
        masks[i] = coco.annToMask(ann).astype(bool)
    return boxes.reshape(-1, 4), masks, [a["category_id"] for a in anns]


def _gt_as_results(coco: COCO) -> list[dict]:
    results = []
    for image_id in sorted(coco.getImgIds()):
        boxes, masks, cats = _image_instances(coco, image_id)
        results += instances_to_coco_results(image_id, boxes, torch.ones(len(cats)), cats, masks)
    return results


def _rect_polygon(x1: float, y1: float, x2: float, y2: float) -> list[list[float]]:
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _synthetic_gt(path: Path) -> Path:
    """Two 20x30 images; rectangles of person (VOC, id 1) and truck (non-VOC, id 8)."""
    instances = [  # (image_id, category_id, x1, y1, x2, y2)
        (1, 1, 2, 2, 12, 10), (1, 8, 15, 4, 28, 18), (1, 8, 3, 12, 14, 19),
        (2, 1, 0, 0, 10, 8), (2, 1, 12, 2, 25, 15), (2, 8, 4, 10, 9, 19),
    ]  # fmt: skip
    anns = [
        {"id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": 0,
         "segmentation": _rect_polygon(x1, y1, x2, y2), "area": float((x2 - x1) * (y2 - y1)),
         "bbox": [x1, y1, x2 - x1, y2 - y1]}
        for ann_id, (image_id, cat, x1, y1, x2, y2) in enumerate(instances, start=1)
    ]  # fmt: skip
    dataset = {
        "images": [{"id": i, "height": 20, "width": 30, "file_name": f"{i}.jpg"} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 8, "name": "truck"}],
    }
    path.write_text(json.dumps(dataset))
    return path


@pytest.fixture()
def synthetic_gt(tmp_path: Path) -> COCO:
    return load_coco_gt(_synthetic_gt(tmp_path / "gt.json"))


# ----------------------------------------------------------------------------- results writer


def test_instances_to_coco_results_converts_boxes_and_masks() -> None:
    masks = torch.zeros(2, 5, 7, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4, 0] = True
    boxes = torch.tensor([[2.0, 1.0, 6.0, 3.0], [0.0, 4.0, 1.0, 5.0]])
    results = instances_to_coco_results(7, boxes, torch.tensor([0.9, 0.2]), [3, 44], masks)
    assert [r["bbox"] for r in results] == [[2.0, 1.0, 4.0, 2.0], [0.0, 4.0, 1.0, 1.0]]
    assert [r["category_id"] for r in results] == [3, 44]
    assert results[0]["image_id"] == 7 and results[0]["score"] == pytest.approx(0.9)
    json.dumps(results)  # str counts: JSON-serialisable
    for result, mask in zip(results, masks, strict=True):
        assert isinstance(result["segmentation"]["counts"], str)
        assert result["segmentation"]["size"] == [5, 7]
        rle = {**result["segmentation"], "counts": result["segmentation"]["counts"].encode()}
        decoded = mask_util.decode(rle)
        np.testing.assert_array_equal(decoded.astype(bool), mask.numpy())


def test_instances_to_coco_results_rejects_bad_input() -> None:
    boxes = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\)"):
        instances_to_coco_results(1, boxes, np.ones(3), [1, 2])
    with pytest.raises(ValueError, match=r"boxes_xyxy must have shape \(N, 4\), got \(2, 5\)"):
        instances_to_coco_results(1, np.zeros((2, 5)), np.ones(2), [1, 2])
    with pytest.raises(ValueError, match="masks must have 2 entries"):
        instances_to_coco_results(1, boxes, np.ones(2), [1, 2], np.zeros((3, 4, 4), bool))
    with pytest.raises(TypeError, match="threshold"):
        instances_to_coco_results(1, boxes, np.ones(2), [1, 2], np.zeros((2, 4, 4), np.float32))
    assert instances_to_coco_results(1, np.zeros((0, 4)), [], [], np.zeros((0, 4, 4), bool)) == []


def test_write_and_load_coco_results(tmp_path: Path) -> None:
    results = instances_to_coco_results(1, np.array([[0.0, 0.0, 2.0, 2.0]]), [0.5], [1])
    path = write_coco_results(tmp_path / "sub" / "results.json", results)
    assert load_coco_results(path) == results
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(ValueError, match="bad.json: malformed"):
        load_coco_results(bad)
    bad.write_text(json.dumps([{"image_id": 1, "score": 1.0, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(ValueError, match=r"bad.json: entry 0 lacks keys \['category_id'\]"):
        load_coco_results(bad)
    bad.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="bad.json: expected a JSON list"):
        evaluate_coco(_synthetic_gt(tmp_path / "gt.json"), bad)
    with pytest.raises(ValueError, match="bad.json: COCO ground truth must be a dict with keys"):
        load_coco_gt(bad)


# ----------------------------------------------------------------------------- COCO AP


def test_synthetic_perfect_missing_and_empty(
    synthetic_gt: COCO, capsys: pytest.CaptureFixture[str]
) -> None:
    results = _gt_as_results(synthetic_gt)
    perfect = evaluate_coco(synthetic_gt, results)
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed
    for iou_type in ("segm", "bbox"):
        for split in SPLITS:
            assert perfect[f"{iou_type}/{split}/AP"] == pytest.approx(1.0)
    # Drop the second truck of image 1: truck recall at most 2/3, person untouched.
    missing = [r for r in results if not (r["image_id"] == 1 and r["category_id"] == 8)]
    metrics = evaluate_coco(synthetic_gt, missing)
    assert metrics["segm/voc/AP"] == pytest.approx(1.0)
    assert metrics["segm/nonvoc/AP"] < 0.7
    assert metrics["bbox/all/AP"] < 1.0
    assert math.isnan(metrics["segm/voc/APl"])  # no large (> 96^2) object at all
    empty = evaluate_coco(synthetic_gt, [])
    assert empty["segm/all/AP"] == 0.0 and empty["bbox/nonvoc/AP50"] == 0.0


def test_evaluate_coco_rejects_bad_results(synthetic_gt: COCO) -> None:
    good = _gt_as_results(synthetic_gt)[0]
    with pytest.raises(ValueError, match="category ids \\[0\\]"):
        evaluate_coco(synthetic_gt, [{**good, "category_id": 0}])
    with pytest.raises(ValueError, match="image ids \\[99\\]"):
        evaluate_coco(synthetic_gt, [{**good, "image_id": 99}])
    small = instances_to_coco_results(1, np.zeros((1, 4)), [1.0], [1], np.ones((1, 10, 15), bool))
    with pytest.raises(ValueError, match=r"mask size \[10, 15\] does not match .* \[20, 30\]"):
        evaluate_coco(synthetic_gt, small, iou_types=("segm",))
    with pytest.raises(ValueError, match="iou_types must be among"):
        evaluate_coco(synthetic_gt, [good], iou_types=("keypoints",))


def test_results_are_not_mutated(synthetic_gt: COCO) -> None:
    results = _gt_as_results(synthetic_gt)
    before = json.dumps(results)
    evaluate_coco(synthetic_gt, results)
    assert json.dumps(results) == before


def test_coco_evaluator_accumulates(synthetic_gt: COCO) -> None:
    evaluator = CocoEvaluator(synthetic_gt, iou_types=("segm",))
    for image_id in (1, 2):
        boxes, masks, cats = _image_instances(synthetic_gt, image_id)
        evaluator.process(image_id, boxes, torch.ones(len(cats)), torch.tensor(cats), masks)
    assert evaluator.evaluate()["segm/all/AP"] == pytest.approx(1.0)
    evaluator.reset()
    assert evaluator.evaluate()["segm/all/AP"] == 0.0
    with pytest.raises(ValueError, match="masks are required"):
        evaluator.process(1, np.zeros((1, 4)), [1.0], [1])


# ----------------------------------------------------------------------------- mIoU


def test_matched_mask_iou_hand_computed() -> None:
    pred = torch.zeros(3, 4, 4, dtype=torch.bool)
    gt = torch.zeros(3, 4, 4, dtype=torch.bool)
    pred[0, :2] = True  # 8 px inside gt's 16 px -> 8 / 16
    gt[0] = True
    pred[1, :, :2] = True  # 8 px vs 8 px with 4 px overlap -> 4 / 12
    gt[1, :2] = True
    iou = matched_mask_iou(pred, gt.numpy().astype(np.uint8))
    assert iou[:2].tolist() == [0.5, 1 / 3]
    assert math.isnan(iou[2])  # empty union


def test_mask_iou_evaluator_splits_and_skips() -> None:
    pred = torch.zeros(5, 4, 4, dtype=torch.bool)
    gt = torch.zeros(5, 4, 4, dtype=torch.bool)
    pred[0, :2], gt[0] = True, True  # person (VOC): 0.5
    pred[1], gt[1] = True, True  # truck: 1.0
    gt[2, 0, 0] = True  # truck: 0.0
    pred[3, 1:3], gt[3, 1:3] = True, True  # traffic light (10): 1.0
    pred[4] = True  # truck with empty GT: skipped
    evaluator = MaskIoUEvaluator()
    evaluator.process(pred, gt, [1, 8, 8, 10, 8])
    evaluator.process(pred[:1], gt[:1], np.array([8]), is_crowd=[True])  # crowd: skipped
    m = evaluator.evaluate()
    assert m["mask_iou/voc/mIoU"] == 0.5 and m["mask_iou/voc/num_instances"] == 1
    assert m["mask_iou/nonvoc/mIoU"] == pytest.approx(2 / 3)
    assert m["mask_iou/nonvoc/mIoU_class"] == pytest.approx(0.75)  # mean(truck 0.5, light 1.0)
    assert m["mask_iou/all/mIoU"] == pytest.approx(0.625)
    assert m["mask_iou/all/mIoU_class"] == pytest.approx(2 / 3)
    assert m["mask_iou/nonvoc/num_instances"] == 3 and m["mask_iou/nonvoc/num_classes"] == 2
    assert m["mask_iou/num_skipped_empty_gt"] == 1 and m["mask_iou/num_skipped_crowd"] == 1
    evaluator.reset()
    m = evaluator.evaluate()
    assert math.isnan(m["mask_iou/all/mIoU"]) and m["mask_iou/all/num_instances"] == 0


def test_mask_iou_evaluator_rejects_bad_input() -> None:
    evaluator = MaskIoUEvaluator()
    masks = torch.ones(2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"shape, got \(2, 4, 4\) and \(3, 4, 4\)"):
        evaluator.process(masks, torch.ones(3, 4, 4, dtype=torch.bool), [1, 2])
    with pytest.raises(ValueError, match=r"category_ids must have shape \(2,\)"):
        evaluator.process(masks, masks, [1, 2, 3])
    with pytest.raises(ValueError, match=r"pred_masks must have shape \(N, H, W\), got \(4, 4\)"):
        evaluator.process(masks[0], masks[0], [1])
    with pytest.raises(TypeError, match="threshold"):
        evaluator.process(masks.float(), masks, [1, 2])


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module", params=["coco_tiny_root", "coco_mini_root"])
def gt_roundtrip(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(GT COCO, results path) with GT written as predictions through our writer."""
    root = request.getfixturevalue(request.param)
    coco = load_coco_gt(root / "annotations" / "instances_val2017.json")
    path = tmp_path_factory.mktemp("results") / "gt_results.json"
    return coco, write_coco_results(path, _gt_as_results(coco))


def test_gt_as_prediction_scores_ap_one(gt_roundtrip) -> None:
    coco, results_path = gt_roundtrip
    metrics = evaluate_coco(coco, results_path)
    for iou_type in ("segm", "bbox"):
        for split in SPLITS:
            for name in ("AP", "AP50", "AP75"):
                assert metrics[f"{iou_type}/{split}/{name}"] == 1.0, (iou_type, split, name)
            for name in ("APs", "APm", "APl"):  # NaN only for a split without such objects
                value = metrics[f"{iou_type}/{split}/{name}"]
                assert math.isnan(value) or value == 1.0, (iou_type, split, name, value)


def test_gt_as_prediction_scores_miou_one(gt_roundtrip) -> None:
    coco, results_path = gt_roundtrip
    by_image: dict[int, list[dict]] = {}
    for result in load_coco_results(results_path):
        by_image.setdefault(result["image_id"], []).append(result)
    evaluator = MaskIoUEvaluator()
    for image_id in sorted(coco.getImgIds()):
        _, gt_masks, cats = _image_instances(coco, image_id)
        rles = [{**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}
                for r in by_image.get(image_id, [])]  # fmt: skip
        pred_masks = np.stack([mask_util.decode(rle) for rle in rles]) if rles else gt_masks
        evaluator.process(pred_masks.astype(bool), gt_masks, cats)
    m = evaluator.evaluate()
    num_voc = sum(a["category_id"] in VOC_CATEGORY_IDS for a in coco.dataset["annotations"]
                  if not a["iscrowd"])  # fmt: skip
    assert m["mask_iou/voc/num_instances"] == num_voc
    for split in SPLITS:
        assert m[f"mask_iou/{split}/mIoU"] == 1.0 and m[f"mask_iou/{split}/mIoU_class"] == 1.0
    assert m["mask_iou/num_skipped_empty_gt"] == 0


def test_split_average_equals_cocoeval_with_cat_ids(coco_mini_root: Path) -> None:
    """Averaging one COCOeval's precision over a split == COCOeval restricted via catIds."""
    coco = load_coco_gt(coco_mini_root / "annotations" / "instances_val2017.json")
    rng = np.random.default_rng(0)
    results = []
    for r in _gt_as_results(coco)[::2][:150]:  # drop half: recall < 1
        x, y, w, h = r["bbox"]
        dx, dy = rng.uniform(-0.3, 0.3, 2) * (w, h)
        results.append({**r, "bbox": [x + dx, y + dy, w, h], "score": float(rng.uniform())})
    ours = evaluate_coco(coco, results, iou_types=("bbox",))
    splits = resolve_coco_splits(coco)
    assert set(splits["voc"]) <= set(VOC_CATEGORY_IDS) and len(splits["nonvoc"]) == 58
    assert set(splits["nonvoc"]) <= set(NONVOC_CATEGORY_IDS)
    for split in SPLITS:
        with contextlib.redirect_stdout(io.StringIO()):
            reference = COCOeval(coco, coco.loadRes([dict(r) for r in results]), "bbox")
            reference.params.catIds = list(splits[split])
            reference.evaluate()
            reference.accumulate()
            reference.summarize()
        for name, expected in zip(METRICS, reference.stats[:6], strict=True):
            expected = float("nan") if expected == -1 else expected
            np.testing.assert_allclose(ours[f"bbox/{split}/{name}"], expected, rtol=1e-12)
        assert 0.0 < ours[f"bbox/{split}/AP"] < 1.0
