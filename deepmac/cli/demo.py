"""``deepmac demo``: a bundled box-prompted model on held-out images, then fine-tuned.

1. ``box-prompted-voc`` (trained with masks of the 20 VOC classes only, on images that exclude
   these) segments the 8 held-out images of the embedded sample from their ground-truth boxes;
   split mIoU is printed beside the filled box (the box itself used as the mask), which any
   useful model must beat, and overlays are written.
2. The model is fine-tuned for a few minutes on the sample's 16 training images (VOC masks
   only, so non-VOC still measures classes without masks) and scored again: what a team with
   a few masks of its own gets from ``deepmac train ... --init box-prompted-voc``.
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
from deepmac.evaluation import write_coco_results
from deepmac.evaluation.evaluate import coco_category_ids, filled_box_miou
from deepmac.visualization import draw_comparison

logger = logging.getLogger(__name__)

#: The ``name`` in a demo run's config.json: how a later demo knows the folder is its own to
#: replace (a ``deepmac train`` run is named after its preset).
DEMO_RUN_NAME = "deepmac_demo"
#: The bundled model the demo starts from.
DEMO_MODEL = "box-prompted-voc"
#: Fine-tuning on the 16 sample images: about 2-3 minutes on 2 cores. A tenth of the bundled
#: recipe's learning rate, so that 16 images adjust the model rather than overwrite it.
FINE_TUNE_STEPS = 120
FINE_TUNE_LR = 1e-4
SPLIT_NAMES = {"all": "all", "voc": "VOC (masks seen)", "nonvoc": "non-VOC (no masks seen)"}


def _holds_other_run(out_dir: Path) -> list[str]:
    """The run files of ``out_dir`` when they belong to a run other than a demo."""
    from deepmac.engine.checkpoint import existing_run_files

    existing = existing_run_files(out_dir)
    try:
        saved = json.loads((out_dir / "config.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        saved = None
    return existing if existing and saved != DEMO_RUN_NAME else []


def fine_tune_config(model: str, steps: int):
    """The bundled model's own config, retargeted at the embedded sample for ``steps`` steps
    from its weights."""
    from deepmac.config import config_from_dict
    from deepmac.engine.checkpoint import load_checkpoint

    cfg = config_from_dict(load_checkpoint(model)["config"])
    cfg.name = DEMO_RUN_NAME
    cfg.model.backbone_init = None
    cfg.train.init_from = model
    cfg.data.roots = []  # the embedded sample's train2017
    cfg.data.val_root = ""  # its val2017: left out of training
    cfg.data.exclude_from_training = []
    cfg.data.mask_split = "voc"
    cfg.train.steps = steps
    cfg.train.lr = FINE_TUNE_LR
    cfg.train.warmup_lr = FINE_TUNE_LR / 4
    cfg.train.warmup_steps = max(1, steps // 12)
    cfg.train.log_every = 20
    cfg.train.checkpoint_every = steps
    cfg.train.eval_every = 0
    return cfg


def run_demo(out_dir: str | Path, *, steps: int | None = None, progress: bool = True) -> dict:
    """Score the bundled model, fine-tune it, score again; returns what ``metrics.json``
    holds. ``steps``: fine-tuning steps (default ``FINE_TUNE_STEPS``).

    An earlier demo in ``out_dir`` is replaced; a folder holding another run is refused.
    """
    from deepmac.evaluation.evaluate import evaluate_box_prompted
    from deepmac.experiments.training import run_training
    from deepmac.inference.segmenter import BoxPromptedSegmenter

    start = time.perf_counter()
    out_dir = check_output_folder(out_dir, "--out")
    other = _holds_other_run(out_dir)
    if other:
        raise UsageError(
            f"--out {out_dir} holds a run that is not a demo ({', '.join(other)}); expected a "
            f"new folder, or one of an earlier demo (which is replaced)"
        )
    root = demo_data_root()
    val = CocoInstances(root, "val2017", mask_split="voc")
    baseline = filled_box_miou(val)

    print(f"1. bundled model {DEMO_MODEL} on the {len(val)} held-out images of {root}")
    bundled = BoxPromptedSegmenter.from_pretrained(DEMO_MODEL)
    before, _ = evaluate_box_prompted(bundled, val)
    _write_overlays(out_dir / "overlays" / "bundled", val, bundled)
    _print_table(val, baseline, {DEMO_MODEL: before})

    cfg = fine_tune_config(DEMO_MODEL, FINE_TUNE_STEPS if steps is None else steps)
    print(
        f"\n2. fine-tuning it for {cfg.train.steps} steps on the 16 training images of the "
        f"sample (VOC masks only)"
    )
    train_start = time.perf_counter()
    summary = run_training(cfg, out_dir, overwrite=True, progress=progress)
    train_seconds = time.perf_counter() - train_start
    tuned = BoxPromptedSegmenter.from_checkpoint(out_dir / "last.pt")
    after, results = evaluate_box_prompted(tuned, val)
    _write_overlays(out_dir / "overlays" / "fine_tuned", val, tuned)
    _print_table(val, baseline, {DEMO_MODEL: before, "fine-tuned": after})

    write_coco_results(out_dir / "results.json", results)
    payload = {
        **after,
        **{f"bundled/{k}": v for k, v in before.items()},
        **{f"filled_box/{k}": v for k, v in baseline.items()},
        "bundled_model": DEMO_MODEL,
        "train_steps": summary["step"],
        "train_seconds": train_seconds,
    }
    write_json_atomic(out_dir / "metrics.json", payload)
    print(
        f"\nfiles: {out_dir / 'last.pt'} (fine-tuned checkpoint), {out_dir / 'metrics.json'}, "
        f"{out_dir / 'results.json'} (COCO results, RLE), {out_dir / 'overlays'}/"
        f"{{bundled,fine_tuned}}/ (ground truth | prediction, non-VOC instances); "
        f"{time.perf_counter() - start:.0f} s in all"
    )
    print(_meaning(before, after, baseline))
    return payload


def _print_table(val: CocoInstances, baseline: dict, models: dict[str, dict]) -> None:
    rows = {}
    for split, label in SPLIT_NAMES.items():
        for name, metrics in models.items():
            rows[f"{label}/{name}"] = metrics[f"mask_iou/{split}/mIoU"]
        rows[f"{label}/filled box"] = baseline[f"mask_iou/{split}/mIoU"]
    print_metrics(rows, title=f"mIoU on the {len(val)} held-out images, ground-truth boxes:")


def _meaning(before: dict, after: dict, baseline: dict) -> str:
    """One sentence on what the two tables say."""

    def gap(metrics: dict, split: str) -> float:
        return metrics[f"mask_iou/{split}/mIoU"] - baseline[f"mask_iou/{split}/mIoU"]

    worst = min(gap(before, s) for s in SPLIT_NAMES)
    if worst > 0:
        verdict = f"beats the filled box on every split (by {worst:.3f} mIoU or more)"
    else:
        verdict = f"does not beat the filled box on every split (worst margin {worst:+.3f})"
    tuned = gap(after, "nonvoc") - gap(before, "nonvoc")
    return (
        f"The bundled model, which never saw these images nor any non-VOC mask, {verdict}; "
        f"fine-tuning on 16 images moved its non-VOC mIoU by {tuned:+.3f} and its VOC mIoU by "
        f"{gap(after, 'voc') - gap(before, 'voc'):+.3f}."
    )


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
