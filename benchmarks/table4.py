"""Small-scale reproduction of the paper's Table 4: box-prompted Deep-MAC, VOC masks only.

Trains the ``table4_<head>`` presets (same backbone and schedule, only the mask head differs)
for every head and seed, evaluates each on coco_mini val2017 with ground-truth boxes, and prints
mIoU overall / VOC / non-VOC as mean +- std over seeds, beside the filled-box baseline. Training
data: coco_tiny and coco_mini train2017 plus coco_tiny val2017 (239 images: the one image
that coco_tiny val2017 shares with the evaluation set is left out).

Usage:
    python benchmarks/table4.py [--heads resnet4 hourglass20 hourglass52] [--seeds 0 1 2]
        [--steps 3000] [--out runs/table4] [--data ../shared/data] [key=value ...]

Finished runs (``OUT/<head>_s<seed>/eval.json``) are reused, so an interrupted sweep restarts
where it stopped. Hours on 2 CPU cores at the default schedule. ``deepmac study table4`` runs
the same rows (plus the all-masks row) with results.json / results.md / a plot; this script
adds inference timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from deepmac.config import apply_overrides
from deepmac.config.presets import get_preset
from deepmac.data import CocoInstances
from deepmac.evaluation.evaluate import evaluate_box_prompted, filled_box_miou
from deepmac.experiments.training import run_training
from deepmac.inference.segmenter import BoxPromptedSegmenter
from deepmac.structures.masks import paste_masks_in_image
from deepmac.studies.runner import git_commit
from deepmac.utils.io import write_json_atomic

SPLITS = ("all", "voc", "nonvoc")


def inference_timing(segmenter: BoxPromptedSegmenter, dataset: CocoInstances, images: int = 10):
    """Median ms per image for the backbone + embeddings, and ms per box for the mask branch
    (crop, head, sigmoid) and for pasting, over the first ``images`` images."""
    per_image, per_box, paste_per_box = [], [], []
    for index in range(min(images, len(dataset))):
        image, target = dataset[index]
        boxes = target["boxes"]
        if len(boxes) == 0:
            continue
        start = time.perf_counter()
        segmenter.set_image(image)
        per_image.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        probs = segmenter.predict_probs(boxes)
        per_box.append((time.perf_counter() - start) * 1e3 / len(boxes))
        start = time.perf_counter()
        paste_masks_in_image(probs, boxes, tuple(image.shape[-2:]))
        paste_per_box.append((time.perf_counter() - start) * 1e3 / len(boxes))
    return {
        "ms_per_image_backbone": statistics.median(per_image),
        "ms_per_box_mask_branch": statistics.median(per_box),
        "ms_per_box_paste": statistics.median(paste_per_box),
    }


def run_one(head: str, seed: int, args, val: CocoInstances) -> dict:
    run_dir = Path(args.out) / f"{head}_s{seed}"
    done = run_dir / "eval.json"
    if done.is_file():
        return json.loads(done.read_text())
    data = Path(args.data)
    cfg = get_preset(f"table4_{head}")
    cfg.data.roots = [
        str(data / "coco_tiny"),
        str(data / "coco_mini"),
        f"{data / 'coco_tiny'}@val2017",
    ]
    # The evaluation set: run_training leaves its images out of training (coco_tiny val2017
    # shares one image with coco_mini val2017).
    cfg.data.val_root = str(data / "coco_mini")
    cfg.train.seed = seed
    cfg.train.steps = args.steps
    cfg.model.backbone_init = "imagenet"
    apply_overrides(cfg, args.overrides)
    start = time.perf_counter()
    run_training(cfg, run_dir, resume=(run_dir / "last.pt").is_file(), progress=args.progress)
    train_seconds = time.perf_counter() - start
    segmenter = BoxPromptedSegmenter.from_checkpoint(run_dir / "last.pt")
    metrics, _ = evaluate_box_prompted(segmenter, val)
    record = {
        "head": head,
        "seed": seed,
        "steps": cfg.train.steps,
        "commit": git_commit(),
        "train_seconds": train_seconds,
        **{k: v for k, v in metrics.items() if "/mIoU" in k or k.endswith("/AP")},
        **inference_timing(segmenter, val),
        "config": cfg.to_dict(),
    }
    write_json_atomic(done, record)
    return record


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--heads", nargs="+", default=["resnet4", "hourglass20", "hourglass52"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default="runs/table4")
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    val = CocoInstances(Path(args.data) / "coco_mini", "val2017", mask_split="voc")
    # Seed-major: an interrupted sweep has every head at the first seeds.
    records = [run_one(h, s, args, val) for s in args.seeds for h in args.heads]

    baseline = filled_box_miou(val)
    lines = [
        "| mask head | seeds | mIoU all | mIoU VOC | mIoU non-VOC | class-mean mIoU non-VOC "
        "| mask AP non-VOC (GT boxes) | train min/run | backbone ms/image | mask branch ms/box |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| filled box (baseline) | - | "
        + " | ".join(f"{baseline[f'mask_iou/{s}/mIoU']:.3f}" for s in SPLITS)
        + " | - | - | - | - | - |",
    ]
    for head in args.heads:
        rows = [r for r in records if r["head"] == head]
        keys = [f"mask_iou/{s}/mIoU" for s in SPLITS]
        keys += ["mask_iou/nonvoc/mIoU_class", "segm/nonvoc/AP"]
        cells = [mean_std([r[k] for r in rows]) for k in keys]
        lines.append(
            f"| {head} | {','.join(str(r['seed']) for r in rows)} | "
            + " | ".join(cells)
            + f" | {statistics.mean(r['train_seconds'] for r in rows) / 60:.0f}"
            + f" | {statistics.median(r['ms_per_image_backbone'] for r in rows):.0f}"
            + f" | {statistics.median(r['ms_per_box_mask_branch'] for r in rows):.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    (Path(args.out) / "table4.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
