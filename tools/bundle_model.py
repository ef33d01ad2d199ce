"""Turn a finished training run into a bundled model: ``deepmac/assets/models/NAME.pt``.

Evaluates the run's float32 weights and the stored float16 copy on the run's evaluation set
(ground-truth boxes as prompts, beside the filled box), writes the model card into the file
(``extra["model_card"]``) and rewrites ``docs/models.md`` from the cards of every bundled
model. ``make models`` runs it after training each recipe.

Usage (``make models`` trains the recipes and runs this for each):
    python tools/bundle_model.py runs/models/box-prompted-voc/last.pt --name box-prompted-voc
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import torch

from deepmac.config import config_from_dict
from deepmac.data import CocoInstances
from deepmac.engine.checkpoint import load_checkpoint
from deepmac.engine.pretrained import (
    MODELS_DIR,
    SPLITS,
    bundled_names,
    card_markdown,
    read_card,
    write_bundled_checkpoint,
)
from deepmac.evaluation.evaluate import evaluate_box_prompted, filled_box_miou
from deepmac.experiments.training import build_training_datasets, eval_root
from deepmac.inference.segmenter import BoxPromptedSegmenter

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "models.md"
#: Bundled name -> (its recipe, i.e. the preset that trains it; the card's one-line summary).
RECIPES = {
    "box-prompted-voc": (
        "bundled_box_prompted_voc",
        "box prompts to masks, trained with masks of the 20 VOC classes only (the paper's "
        "setting: non-VOC scores are classes it never saw a mask of)",
    ),
    "box-prompted-all": (
        "bundled_box_prompted_all",
        "box prompts to masks, trained with masks of every COCO class",
    ),
}
DOCS_HEADER = """# Bundled models

Trained box-prompted models shipped inside the package (`deepmac/assets/models/`), usable by
name wherever a checkpoint is taken:

```sh
deepmac models                                        # this list, one line each
deepmac predict box-prompted-all --images photos/ --boxes boxes.json --out masks.json
deepmac eval box-prompted-voc --data-root ../shared/data/coco_mini
deepmac export box-prompted-all --onnx model.onnx
deepmac train box_prompted_cpu --init box-prompted-all --data-root my_coco/ --out runs/mine
```

```python
from deepmac import BoxPromptedSegmenter
seg = BoxPromptedSegmenter.from_pretrained("box-prompted-all")
masks, scores = seg.predict(image, boxes_xyxy)
```

`make models` retrains both from their recipes (the `bundled_box_prompted_*` presets) and
rebuilds this page with `tools/bundle_model.py`. The sections below are generated from the
cards stored in the files (`deepmac.engine.pretrained.read_card`); a test checks that they agree.
The filled box (the ground-truth box itself used as the mask) is the baseline a box-prompted
model must beat.
"""


def wall_seconds(metrics_file: Path) -> float:
    """Training wall time of a run from its ``metrics.jsonl``: the sum over the run's
    segments (``elapsed_s`` restarts when a run is resumed)."""
    total, last = 0.0, 0.0
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("type") != "train" or "elapsed_s" not in record:
            continue
        if record["elapsed_s"] < last:
            total += last
        last = record["elapsed_s"]
    return total + last


def split_miou(segmenter: BoxPromptedSegmenter, val: CocoInstances) -> dict[str, float]:
    metrics, _ = evaluate_box_prompted(segmenter, val, progress=True)
    return {s: metrics[f"mask_iou/{s}/mIoU"] for s in SPLITS} | {
        f"{s}_mask_ap": metrics[f"segm/{s}/AP"] for s in SPLITS
    }


def training_image_list(cfg) -> list[str]:
    names = []
    for dataset in build_training_datasets(cfg, None):
        names += [dataset.image_info(i)["file_name"] for i in range(len(dataset))]
    return sorted(names)


def write_docs() -> None:
    sections = [card_markdown(read_card(name)) for name in bundled_names()]
    DOCS.write_text(DOCS_HEADER + "\n" + "\n\n".join(sections) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="OUT/last.pt of the finished run")
    parser.add_argument("--name", required=True, choices=sorted(RECIPES))
    parser.add_argument("--command", help="what reproduces it (default: make models' lines)")
    parser.add_argument("--machine", default=f"{platform.processor() or platform.machine()}")
    args = parser.parse_args()

    src = Path(args.checkpoint)
    ckpt = load_checkpoint(src)
    if ckpt["model_type"] != "box_prompted":
        sys.exit(f"{src}: expected a box_prompted checkpoint, found {ckpt['model_type']!r}")
    cfg = config_from_dict(ckpt["config"])
    preset, summary = RECIPES[args.name]
    if cfg.name != preset:
        sys.exit(f"{src}: expected a run of the preset {preset}, found {cfg.name!r}")
    if ckpt["step"] != cfg.train.steps:
        sys.exit(f"{src}: the run stopped at step {ckpt['step']} of {cfg.train.steps}")
    images = training_image_list(cfg)
    val = CocoInstances(eval_root(cfg), cfg.data.val_split, mask_split="voc")
    float32 = split_miou(BoxPromptedSegmenter.from_checkpoint(ckpt), val)
    baseline = filled_box_miou(val)
    card = {
        "name": args.name,
        "summary": summary,
        "command": args.command
        or f"make models (deepmac train {preset} --out runs/models/{args.name}; python "
        f"tools/bundle_model.py runs/models/{args.name}/last.pt --name {args.name})",
        "commit": ckpt.get("git_sha") or "unknown",
        "preset": cfg.name,
        "training_images": len(images),
        "training_image_list_sha256": hashlib.sha256("\n".join(images).encode()).hexdigest(),
        "steps": ckpt["step"],
        "train_wall_seconds": wall_seconds(src.parent / "metrics.jsonl"),
        "machine": args.machine,
        "storage_dtype": "float16",
        "eval_set": f"{eval_root(cfg).name}/{cfg.data.val_split} ({len(val)} images)",
        "metrics": float32,
        "metrics_float32": float32,
        "filled_box": {s: baseline[f"mask_iou/{s}/mIoU"] for s in SPLITS},
        "storage_metric_change": float("nan"),
    }
    dst = MODELS_DIR / f"{args.name}.pt"
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    write_bundled_checkpoint(ckpt, dst, card, dtype=torch.float16)
    stored = split_miou(BoxPromptedSegmenter.from_checkpoint(dst), val)
    card["metrics"] = stored
    card["storage_metric_change"] = max(abs(stored[s] - float32[s]) for s in SPLITS)
    write_bundled_checkpoint(ckpt, dst, card, dtype=torch.float16)
    write_docs()
    print(card_markdown(card))
    print(f"\nwrote {dst} ({dst.stat().st_size / 1e6:.1f} MB) and {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
