"""Implementations of the model commands train, eval, export, models, plot and study (the
parser is in ``main``; ``predict`` has its own module)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from deepmac.cli.errors import UsageError
from deepmac.cli.paths import check_output_file, check_output_folder
from deepmac.cli.report import print_metrics, write_json_atomic
from deepmac.config import flatten_config

logger = logging.getLogger(__name__)

#: Config keys a resumed run may not change: the weights and optimizer state of the
#: checkpoint would not fit (``model.backbone_init`` is overwritten by the checkpoint anyway).
_RESUME_FIXED = ("model.", "train.optimizer")


def _check_resume_overrides(saved: dict, resumed: dict, out: Path) -> None:
    """Refuse overrides that change what the checkpoint's weights were trained as; log the
    others (a resumed run with them is no longer bit-identical to an uninterrupted one)."""
    before, after = flatten_config(saved), flatten_config(resumed)
    changed = [k for k in after if after[k] != before.get(k) and k != "model.backbone_init"]
    fixed = [k for k in changed if k.startswith(_RESUME_FIXED)]
    if fixed:
        shown = ", ".join(f"{k}: run {before.get(k)!r}, given {after[k]!r}" for k in fixed[:3])
        raise UsageError(
            f"--resume: the overrides change what {out / 'last.pt'} was trained as ({shown}); "
            f"expected only training settings such as train.steps; start a new run with "
            f"another --out, or --overwrite this one"
        )
    others = [k for k in changed if k != "train.steps"]
    if others:
        logger.warning("--resume with changed settings: %s", ", ".join(others))


def run_train(args: argparse.Namespace) -> int:
    from deepmac.config.presets import describe_presets
    from deepmac.engine.distributed import cleanup, is_main_process
    from deepmac.experiments.training import run_training, training_sets

    if args.list:
        print(describe_presets())
        return 0
    cfg, out = _train_config(args)
    if cfg is None:  # --print-config
        return 0
    for root, _ in training_sets(cfg) if cfg.data.roots else []:
        if not (root / "annotations").is_dir():
            raise FileNotFoundError(
                f"data root {root} has no annotations/ folder; expected the COCO layout "
                f"annotations/instances_<split>.json + <split>/ images"
            )
    try:
        summary = run_training(
            cfg,
            out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        main = is_main_process()
    finally:
        cleanup()  # torchrun: leave the process group cleanly, also after an error
    if main:
        print(
            f"trained {summary['step']} steps in {summary['elapsed_s']:.0f} s; "
            f"checkpoint: {out / 'last.pt'}"
        )
    return 0


def _train_config(args: argparse.Namespace):
    """``(config, run folder)`` of ``deepmac train``: the preset, ``--config`` or the resumed
    run's own config, with the options and overrides applied; ``(None, out)`` once
    ``--print-config`` printed it."""
    from deepmac.config import apply_overrides, load_config
    from deepmac.config.presets import get_preset
    from deepmac.engine.checkpoint import existing_run_files

    if args.preset is None and args.config is None:
        raise UsageError("train needs a PRESET (see deepmac train --list) or --config FILE.json")
    if args.preset is not None and args.config is not None:
        raise UsageError(
            f"train takes a PRESET or --config, found both ({args.preset}, {args.config}); "
            f"the config file replaces the preset"
        )
    base = load_config(args.config) if args.config else None
    out = check_output_folder(args.out or f"runs/{args.preset or base.name}", "--out")
    if args.resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {out / 'last.pt'}")
        cfg = load_config(out / "config.json")  # the run's own config, not the preset's
        saved = cfg.to_dict()
    else:
        existing = existing_run_files(out)
        if existing and not args.overwrite and not args.print_config:
            raise UsageError(
                f"--out {out} already holds a run ({', '.join(existing)}); expected an empty "
                f"or new folder: pass --resume to continue that run, or --overwrite to replace it"
            )
        cfg = base if base is not None else get_preset(args.preset)
    if args.data_root:
        cfg.data.roots = [str(Path(r)) for r in args.data_root]
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.init is not None:
        _apply_init(cfg, args.init)
    if args.device is not None:
        cfg.train.device = args.device
    if args.amp is not None:
        cfg.train.amp = args.amp
    apply_overrides(cfg, args.overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return None, out
    if args.resume:
        _check_resume_overrides(saved, cfg.to_dict(), out)
    return cfg, out


def _apply_init(cfg, init: str) -> None:
    """``--init``: a bundled model or deepmac checkpoint starts the whole model (and gives its
    architecture); a backbone weights file or 'imagenet' starts the backbone."""
    from deepmac.config import config_from_dict
    from deepmac.engine.checkpoint import NotADeepmacCheckpoint, load_checkpoint
    from deepmac.engine.pretrained import resolve_model_path

    if init == "imagenet":
        cfg.model.backbone_init = init
        return
    path = resolve_model_path(init)  # a bundled name's file; a misspelt one's did-you-mean
    if not path.is_file():
        raise FileNotFoundError(
            f"--init {init}: no such file; expected a bundled model (deepmac models), a "
            f"checkpoint or backbone weights file, or 'imagenet'"
        )
    try:
        ckpt = load_checkpoint(path)
    except NotADeepmacCheckpoint:  # a plain state_dict: backbone weights
        cfg.model.backbone_init = init
        return
    saved = config_from_dict(ckpt["config"]).model
    # The model is the checkpoint's; the category lists are filled in from the data anyway.
    ignored = ("backbone_init", "category_ids", "class_names")
    before = dataclasses.asdict(cfg.model)
    changed = [
        f"model.{key}"
        for key, value in dataclasses.asdict(saved).items()
        if key not in ignored and before.get(key) != value
    ]
    if changed:
        logger.info(
            "--init %s: the model is the checkpoint's, so %s differ from the preset",
            init,
            ", ".join(changed),
        )
    cfg.model = saved
    cfg.model.backbone_init = None  # every tensor comes from the checkpoint
    cfg.train.init_from = init


def _checkpoint_file(path_or_name: str) -> Path:
    """The file a checkpoint argument names (a bundled model's, for a name), so that no
    output is written over it; the argument as given when it names nothing."""
    from deepmac.engine.pretrained import resolve_model_path

    try:
        return resolve_model_path(path_or_name)
    except ValueError:
        return Path(path_or_name)  # the loader reports it, after the output checks


def run_models(args: argparse.Namespace) -> int:
    from deepmac.engine.pretrained import MODELS_DIR, bundled_names, card_one_line, read_card

    names = bundled_names()
    if not names:
        raise FileNotFoundError(
            f"no bundled model is installed: expected NAME.pt files in {MODELS_DIR}, found none"
        )
    width = max(map(len, names))
    for name in names:
        size_mb = (MODELS_DIR / f"{name}.pt").stat().st_size / 1e6
        print(f"{name:{width}s}  {card_one_line(read_card(name))}; {size_mb:.1f} MB")
    print("full cards: docs/models.md; use a name wherever a checkpoint is taken")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from deepmac.visualization.curves import plot_training_curves

    inputs = {"the run's metrics.jsonl": Path(args.run_dir) / "metrics.jsonl"}
    out = check_output_file(args.out, "--out", inputs) if args.out else None
    print(f"wrote {plot_training_curves(args.run_dir, out)}")
    return 0


def run_study_command(args: argparse.Namespace) -> int:
    from deepmac.config.presets import SHARED_DATA
    from deepmac.studies import StudyData, get_study, run_study

    study = get_study(args.table)
    data_dir = Path(args.data) if args.data else SHARED_DATA
    for name in ("coco_tiny", "coco_mini"):
        if not (data_dir / name / "annotations").is_dir():
            raise FileNotFoundError(
                f"--data {data_dir}: no {name}/annotations; expected the folder holding the "
                f"shared COCO subsets coco_tiny and coco_mini"
            )
    out = check_output_folder(args.out or f"runs/study_{study.name}", "--out")
    records = run_study(
        study,
        seeds=args.seeds,
        out=out,
        data=StudyData.shared(data_dir),
        steps=args.steps,
        overrides=args.overrides,
        progress=not args.no_progress,
        rows=args.rows,
        jobs=args.jobs,
        reuse=args.reuse,
        restore_from=args.records,
        report_only=args.report_only,
    )
    print((out / "results.md").read_text())
    print(f"{len(records)} runs; files: {out}/results.json, results.md, {study.name}.png")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from deepmac.config import config_from_dict
    from deepmac.data import CocoInstances
    from deepmac.engine.devices import resolve_device
    from deepmac.experiments.training import eval_root
    from deepmac.inference.checkpoints import load_model_checkpoint
    from deepmac.models.families import get_family

    device = resolve_device(args.device)  # before the (slow) checkpoint and dataset loads
    if args.out:
        check_output_file(args.out, "--out", {"the checkpoint": _checkpoint_file(args.checkpoint)})
    ckpt = load_model_checkpoint(args.checkpoint)
    cfg = config_from_dict(ckpt["config"])
    root = Path(args.data_root) if args.data_root else eval_root(cfg)
    if not args.data_root and not (root / "annotations").is_dir():
        raise FileNotFoundError(
            f"the config of {args.checkpoint} evaluates on {root}, which is not on this machine; "
            f"expected --data-root DIR (a COCO-style root with annotations/instances_"
            f"{args.split}.json)"
        )
    dataset = CocoInstances(root, args.split, mask_split=cfg.data.mask_split)
    options = dict(max_images=args.max_images, progress=not args.no_progress)
    start = time.perf_counter()
    # A detector is scored by its detections; every family also from ground-truth boxes.
    detections = get_family(ckpt["model_type"]).detector and not args.gt_boxes
    if detections:
        metrics = _eval_detections(args, ckpt, dataset, device, options)
        shown = {k: v for k, v in metrics.items() if k.endswith(("/AP", "/AP50", "/AP75"))}
        title = f"{args.checkpoint} on {root.name}/{args.split} (detected boxes):"
    else:
        metrics = _eval_gt_boxes(args, ckpt, dataset, device, options)
        # No bbox/* rows: the ground-truth boxes, scored against themselves, give AP 1.
        shown = {
            k.replace("mask_iou/", "model/").replace("filled_box/model/", "filled box/"): v
            for k, v in metrics.items()
            if k.endswith(("/mIoU", "/mIoU_class")) or (k.startswith("segm/") and k.endswith("/AP"))
        }
        title = (
            f"{args.checkpoint} on {root.name}/{args.split} (ground-truth boxes as prompts; the "
            f"filled box is the baseline to beat):"
        )
    elapsed = time.perf_counter() - start
    print_metrics(shown, title=title)
    print(f"{elapsed:.1f} s for {min(len(dataset), args.max_images or len(dataset))} images")
    if args.out:
        write_json_atomic(args.out, {**metrics, "eval_seconds": elapsed})
        print(f"wrote {args.out}")
    return 0


def _eval_detections(args, ckpt: dict, dataset, device, options: dict) -> dict[str, float]:
    from deepmac.evaluation.evaluate import evaluate_deepmac
    from deepmac.inference.checkpoints import build_from_checkpoint
    from deepmac.inference.detector import DeepMACPredictor

    predictor = build_from_checkpoint(
        DeepMACPredictor.from_checkpoint, ckpt, args.checkpoint, device=device, amp=args.amp
    )
    return evaluate_deepmac(predictor, dataset, **options)[0]


def _eval_gt_boxes(args, ckpt: dict, dataset, device, options: dict) -> dict[str, float]:
    """mIoU and AP from ground-truth boxes, beside the filled box's mIoU."""
    from deepmac.evaluation.evaluate import evaluate_box_prompted, filled_box_miou
    from deepmac.inference.checkpoints import build_from_checkpoint
    from deepmac.inference.segmenter import BoxPromptedSegmenter

    segmenter = build_from_checkpoint(
        BoxPromptedSegmenter.from_checkpoint, ckpt, args.checkpoint, device=device, amp=args.amp
    )
    metrics, _ = evaluate_box_prompted(segmenter, dataset, **options)
    baseline = filled_box_miou(dataset, max_images=args.max_images)
    return metrics | {f"filled_box/{k}": v for k, v in baseline.items()}


def run_export(args: argparse.Namespace) -> int:
    from deepmac.export import check_onnx_parity, export_onnx
    from deepmac.inference.checkpoints import (
        build_from_checkpoint,
        load_model_checkpoint,
        model_from_checkpoint,
    )

    check_output_file(args.onnx, "--onnx", {"the checkpoint": _checkpoint_file(args.checkpoint)})
    ckpt = load_model_checkpoint(args.checkpoint)
    model, cfg = build_from_checkpoint(model_from_checkpoint, ckpt, args.checkpoint)
    model_type = "box_prompted" if args.prompt else cfg.model.type
    metadata = {
        "model_type": model_type,
        "image_size": str(cfg.data.image_size),
        "category_ids": json.dumps(cfg.model.category_ids),
        "class_names": json.dumps(cfg.model.class_names),
        "source_checkpoint": Path(args.checkpoint).name,
    }
    start = time.perf_counter()
    path = export_onnx(
        model,
        args.onnx,
        image_size=cfg.data.image_size,
        prompt=args.prompt,
        opset=args.opset,
        metadata=metadata,
    )
    print(f"wrote {path} ({model_type} graph, {time.perf_counter() - start:.1f} s)")
    if args.no_check:
        return 0
    diffs = check_onnx_parity(model, path, image_size=cfg.data.image_size, prompt=args.prompt)
    print("onnxruntime vs PyTorch, max abs difference:")
    for name, value in diffs.items():
        print(f"  {name:<28} {value:.2e}")
    worst = max((v for k, v in diffs.items() if "probs" in k), default=0.0)
    mismatched = sum(v for k, v in diffs.items() if k.endswith("_mismatch"))
    if worst > args.tolerance or mismatched:
        print(
            f"parity FAILED: mask probabilities differ by up to {worst:.2e} (tolerance "
            f"{args.tolerance:.0e}), {int(mismatched)} labels differ"
        )
        return 1
    print(f"parity ok (tolerance {args.tolerance:.0e} on probabilities)")
    return 0
