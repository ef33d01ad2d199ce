"""``deepmac demo``: the data and evaluation path on the embedded COCO sample.

Until a trained box-prompted model is available in this package, the demo scores the
reference every model must beat: the filled box itself used as the mask, pasted through the
same box-relative path a model's ``S x S`` output takes. It exercises the dataset (masks for VOC
classes only), ``paste_masks_in_image``, the split mIoU and the split mask AP, and writes
side-by-side overlays (ground truth | prediction) of the held-out images.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from PIL import Image

from deepmac.cli.report import print_metrics, write_json_atomic
from deepmac.data import CocoInstances, demo_data_root
from deepmac.data.class_splits import NONVOC_CATEGORY_IDS
from deepmac.evaluation import CocoEvaluator, MaskIoUEvaluator, write_coco_results
from deepmac.structures.masks import paste_masks_in_image
from deepmac.visualization import draw_instances

logger = logging.getLogger(__name__)

MASK_SIZE = 32


def run_demo(out_dir: str | Path) -> dict[str, float]:
    """Score filled-box masks on the held-out demo images; write metrics, results, overlays.

    Returns:
        The metrics dict also written to ``out_dir/metrics.json``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    overlay_dir = out_dir / "overlays"
    overlay_dir.mkdir(parents=True, exist_ok=True)
    root = demo_data_root()
    train = CocoInstances(root, "train2017", mask_split="voc")
    val = CocoInstances(root, "val2017", mask_split="voc")
    num_train_masks = sum(int(train.instance_labels(i)[0].numel()) for i in range(len(train)))
    print(f"embedded sample: {root}")
    print(
        f"  train2017: {len(train)} images, {num_train_masks} instances, masks kept for the "
        f"{len(train.mask_category_ids)} VOC classes only; val2017: {len(val)} held-out images"
    )

    miou = MaskIoUEvaluator()
    coco = CocoEvaluator(val.ann_file)
    for index in range(len(val)):
        image, target = val[index]
        boxes = target["boxes"]
        category_ids = torch.tensor(
            [val.contiguous_to_category_id[int(c)] for c in target["labels"]], dtype=torch.long
        )
        # A box-relative S x S map of ones, pasted like a model's mask probabilities.
        masks = paste_masks_in_image(
            torch.ones(len(boxes), MASK_SIZE, MASK_SIZE), boxes, target["size"]
        )
        miou.process(masks, target["gt_masks"], category_ids)
        scores = torch.ones(len(boxes))
        coco.process(target["image_id"], boxes, scores, category_ids, masks)
        _write_overlay(
            overlay_dir / f"{target['image_id']:012d}.png", image, target, masks, category_ids, val
        )

    metrics = {**miou.evaluate(), **coco.evaluate()}
    print_metrics(
        {k: v for k, v in metrics.items() if k.endswith("/mIoU") or k.endswith("/AP")},
        title="\nfilled-box masks with ground-truth boxes (held-out demo images):",
    )
    write_coco_results(out_dir / "results.json", coco.results)
    write_json_atomic(out_dir / "metrics.json", metrics)
    print(
        f"\nwrote {out_dir / 'metrics.json'}, {out_dir / 'results.json'} and "
        f"{len(val)} overlays (ground truth | prediction, non-VOC instances) in {overlay_dir}/ "
        f"in {time.perf_counter() - start:.1f} s"
    )
    print(
        "These masks are the filled boxes: the bar a box-prompted model has to clear. On so few "
        "images the numbers are noisy; see README for the reference figures."
    )
    return metrics


def _write_overlay(path, image, target, masks, category_ids, dataset) -> None:
    """Ground truth and prediction of the non-VOC instances, side by side."""
    keep = torch.tensor([int(c) in NONVOC_CATEGORY_IDS for c in category_ids], dtype=torch.bool)
    names = [dataset.category_names[int(c)] for c in target["labels"][keep]]
    boxes = target["boxes"][keep]
    left = draw_instances(image, target["gt_masks"][keep], boxes, names)
    right = draw_instances(image, masks[keep], boxes, names)
    canvas = Image.new("RGB", (left.width * 2, left.height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    canvas.save(path)
