"""Box-prompted mIoU of the trivial "filled box" mask, a floor for any box-prompted mask head.

Each non-crowd ground-truth instance is predicted as its own GT box, filled. Filling rule
(``centre``, the default): pixel ``(row, col)`` is on when its centre ``(col + 0.5, row + 0.5)``
lies in the closed box ``[x1, x2] x [y1, y2]``. ``touched`` turns on every pixel the box
overlaps (the integer box ``floor(x1)..ceil(x2)``), so it is never smaller than the object.
``polygon`` rasterises the box as a polygon with pycocotools, as ``COCO.loadRes`` does for
box-only results. Scored with ``deepmac.evaluation.MaskIoUEvaluator`` against the decoded GT
polygons, over non-crowd instances.

Usage::

    .venv/bin/python benchmarks/box_baseline.py                       # coco_mini val2017
    .venv/bin/python benchmarks/box_baseline.py --root ../shared/data/coco_tiny --rule touched
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util

from deepmac.evaluation import MaskIoUEvaluator, load_coco_gt

RULES = ("centre", "touched", "polygon")
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini"


def filled_boxes(boxes_xywh: np.ndarray, height: int, width: int, rule: str) -> np.ndarray:
    """Bool ``(N, H, W)`` masks of COCO ``xywh`` boxes filled by ``rule`` (see module docs)."""
    if rule == "polygon":
        polygons = [[[x, y, x + w, y, x + w, y + h, x, y + h]] for x, y, w, h in boxes_xywh]
        rles = [mask_util.merge(mask_util.frPyObjects(p, height, width)) for p in polygons]
        decoded = [mask_util.decode(rle).astype(bool) for rle in rles]
        return np.stack(decoded) if decoded else np.zeros((0, height, width), bool)
    cols, rows = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    x1, y1 = boxes_xywh[:, 0:1], boxes_xywh[:, 1:2]  # (N, 1)
    x2, y2 = x1 + boxes_xywh[:, 2:3], y1 + boxes_xywh[:, 3:4]  # (N, 1)
    if rule == "centre":
        inside_x = (cols + 0.5 >= x1) & (cols + 0.5 <= x2)  # (N, W)
        inside_y = (rows + 0.5 >= y1) & (rows + 0.5 <= y2)  # (N, H)
    elif rule == "touched":  # pixel [c, c + 1) overlaps (x1, x2)
        inside_x = (cols + 1 > x1) & (cols < x2)  # (N, W)
        inside_y = (rows + 1 > y1) & (rows < y2)  # (N, H)
    else:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return inside_y[:, :, None] & inside_x[:, None, :]  # (N, H, W)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="COCO-style dataset root")
    parser.add_argument("--split", default="val2017", help="annotation split name")
    parser.add_argument("--rule", choices=RULES, default="centre")
    args = parser.parse_args()

    start = time.perf_counter()
    coco = load_coco_gt(args.root / "annotations" / f"instances_{args.split}.json")
    evaluator = MaskIoUEvaluator()
    for image_id in sorted(coco.getImgIds()):
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        if not anns:
            continue
        image = coco.imgs[image_id]
        gt_masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        pred_masks = filled_boxes(boxes, image["height"], image["width"], args.rule)
        evaluator.process(pred_masks, gt_masks, [a["category_id"] for a in anns])
    metrics = evaluator.evaluate()
    print(f"filled-box baseline, rule={args.rule}, {args.root.name}/{args.split} "
          f"({time.perf_counter() - start:.1f} s)")  # fmt: skip
    for split in ("all", "voc", "nonvoc"):
        prefix = f"mask_iou/{split}"
        print(
            f"  {split:>6}: mIoU {metrics[f'{prefix}/mIoU']:.4f}  "
            f"class-mean {metrics[f'{prefix}/mIoU_class']:.4f}  "
            f"instances {metrics[f'{prefix}/num_instances']}  "
            f"classes {metrics[f'{prefix}/num_classes']}"
        )
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
