"""Implementations of the model commands: train, eval, predict (the parser is in ``main``)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from deepmac.cli.report import print_metrics, write_json_atomic

logger = logging.getLogger(__name__)


def run_train(args: argparse.Namespace) -> int:
    from deepmac.config import apply_overrides, load_config
    from deepmac.experiment import run_training, training_sets
    from deepmac.presets import describe_presets, get_preset

    if args.list:
        print(describe_presets())
        return 0
    if args.preset is None:
        raise ValueError("train needs a PRESET (see deepmac train --list)")
    out = Path(args.out or f"runs/{args.preset}")
    if args.resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {out / 'last.pt'}")
        cfg = load_config(out / "config.json")  # the run's own config, not the preset's
    else:
        cfg = get_preset(args.preset)
    if args.data_root:
        cfg.data.roots = [str(Path(r)) for r in args.data_root]
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.init is not None:
        cfg.model.backbone_init = args.init
    apply_overrides(cfg, args.overrides)
    for root, _ in training_sets(cfg) if cfg.data.roots else []:
        if not (root / "annotations").is_dir():
            raise FileNotFoundError(
                f"data root {root} has no annotations/ folder; expected the COCO layout "
                f"annotations/instances_<split>.json + <split>/ images"
            )
    summary = run_training(cfg, out, resume=args.resume, progress=not args.no_progress)
    print(
        f"trained {summary['step']} steps in {summary['elapsed_s']:.0f} s; "
        f"checkpoint: {out / 'last.pt'}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from deepmac.config import config_from_dict
    from deepmac.data import CocoInstances
    from deepmac.engine import load_checkpoint
    from deepmac.experiment import amp_dtype, eval_root, evaluate_box_prompted
    from deepmac.predictor import BoxPromptedSegmenter

    cfg = config_from_dict(
        load_checkpoint(args.checkpoint, expected_model_type="box_prompted")["config"]
    )
    root = Path(args.data_root) if args.data_root else eval_root(cfg)
    dataset = CocoInstances(root, args.split, mask_split=cfg.data.mask_split)
    segmenter = BoxPromptedSegmenter.from_checkpoint(args.checkpoint, amp_dtype=amp_dtype(args.amp))
    start = time.perf_counter()
    metrics, results = evaluate_box_prompted(
        segmenter, dataset, max_images=args.max_images, progress=not args.no_progress
    )
    elapsed = time.perf_counter() - start
    shown = {k: v for k, v in metrics.items() if k.endswith(("/mIoU", "/mIoU_class", "/AP"))}
    print_metrics(
        shown, title=f"{args.checkpoint} on {root.name}/{args.split} (ground-truth boxes):"
    )
    print(f"{elapsed:.1f} s for {min(len(dataset), args.max_images or len(dataset))} images")
    if args.out:
        write_json_atomic(args.out, {**metrics, "eval_seconds": elapsed})
        print(f"wrote {args.out}")
    return 0


def _collect_images(paths: list[str]) -> list[Path]:
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in suffixes)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"--images: {p} is neither a file nor a folder")
    if not files:
        raise ValueError(f"--images {' '.join(paths)}: no image files found")
    return files


def run_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from deepmac.evaluation import instances_to_coco_results, write_coco_results
    from deepmac.experiment import amp_dtype
    from deepmac.predictor import BoxPromptedSegmenter
    from deepmac.prompts import load_box_prompts
    from deepmac.visualization import draw_instances

    images = _collect_images(args.images)
    prompts = load_box_prompts(args.boxes, [p.name for p in images])
    segmenter = BoxPromptedSegmenter.from_checkpoint(args.checkpoint, amp_dtype=amp_dtype(args.amp))
    viz = Path(args.viz) if args.viz else None
    results = []
    start, num_boxes = time.perf_counter(), 0
    for path in images:
        prompt = prompts.get(path.name)
        if prompt is None:
            logger.warning("%s: no boxes in %s, skipped", path.name, args.boxes)
            continue
        try:
            image = Image.open(path).convert("RGB")
        except OSError as err:
            raise ValueError(f"cannot read image {path}: {err}") from None
        prompt = prompt.valid(image.height, image.width, source=str(args.boxes))
        if len(prompt.boxes) == 0:
            continue
        masks = segmenter.predict(image, prompt.boxes)
        num_boxes += len(prompt.boxes)
        results += instances_to_coco_results(
            prompt.image_id, prompt.boxes, prompt.scores, prompt.category_ids, masks
        )
        if viz is not None:
            viz.mkdir(parents=True, exist_ok=True)
            overlay = draw_instances(image, masks, prompt.boxes, prompt.labels)
            overlay.save(viz / f"{path.stem}.png")
    write_coco_results(args.out, results)
    elapsed = time.perf_counter() - start
    print(
        f"{len(results)} masks for {len(images)} images in {elapsed:.1f} s "
        f"({1e3 * elapsed / max(num_boxes, 1):.1f} ms per box) -> {args.out}"
    )
    return 0
