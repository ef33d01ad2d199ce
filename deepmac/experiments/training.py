"""Run an experiment from its config: datasets, model, optimiser, engine, periodic evaluation.

This is the glue between ``ExperimentConfig`` and the config-free components; the CLI and the
benchmarks call it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from deepmac.config import ExperimentConfig
from deepmac.data import (
    CocoInstances,
    build_eval_transforms,
    build_train_loader,
    build_train_transforms,
    demo_data_root,
)
from deepmac.data.coco import image_key, image_keys
from deepmac.engine import build_warmup_cosine, resume_from, train
from deepmac.engine.checkpoint import (
    load_checkpoint,
    load_model_state,
    remove_run_files,
    remove_stale_temp_files,
    unwrap_model,
    write_checkpoint,
)
from deepmac.engine.devices import DEVICE_CHOICES, resolve_device
from deepmac.engine.distributed import init_distributed, wrap_ddp
from deepmac.engine.metrics import MetricsLog
from deepmac.engine.precise_bn import recompute_batch_norm_statistics
from deepmac.engine.precision import amp_dtype
from deepmac.engine.train import move_to_device
from deepmac.evaluation.evaluate import evaluate_model
from deepmac.models.families import build_training_model, get_family

logger = logging.getLogger(__name__)


def training_sets(cfg: ExperimentConfig) -> list[tuple[Path, str]]:
    """``(root, split)`` of every training set. ``data.roots`` entries are ``ROOT`` (split
    ``data.train_split``) or ``ROOT@SPLIT``; none means the embedded demo sample."""
    if not cfg.data.roots:
        return [(demo_data_root(), cfg.data.train_split)]
    sets = []
    for entry in cfg.data.roots:
        root, _, split = str(entry).partition("@")
        sets.append((Path(root), split or cfg.data.train_split))
    return sets


def eval_root(cfg: ExperimentConfig) -> Path:
    return Path(cfg.data.val_root) if cfg.data.val_root else training_sets(cfg)[0][0]


def evaluation_image_keys(cfg: ExperimentConfig) -> set[tuple[str, int, int]]:
    """``image_key`` of every image of the evaluation set (``eval_root`` / ``data.val_split``),
    or an empty set when that set has no annotation file."""
    ann_file = eval_root(cfg) / "annotations" / f"instances_{cfg.data.val_split}.json"
    return image_keys(ann_file) if ann_file.is_file() else set()


def excluded_image_keys(cfg: ExperimentConfig) -> set[tuple[str, int, int]]:
    """``image_key`` of every image training must not see: the evaluation set and the sets of
    ``data.exclude_from_training``.

    Raises:
        FileNotFoundError: an ``exclude_from_training`` set has no annotation file (a typo
            there would silently train on the images it was meant to hold out).
    """
    keys = evaluation_image_keys(cfg)
    for entry in cfg.data.exclude_from_training:
        root, _, split = str(entry).partition("@")
        root_path = demo_data_root() if root == "demo" else Path(root)
        ann_file = root_path / "annotations" / f"instances_{split or cfg.data.val_split}.json"
        if not ann_file.is_file():
            raise FileNotFoundError(
                f"data.exclude_from_training entry {entry!r}: expected a COCO annotation file "
                f"at {ann_file}, found none"
            )
        keys |= image_keys(ann_file)
    return keys


def build_training_datasets(cfg: ExperimentConfig, transforms) -> list[CocoInstances]:
    """One dataset per training set, without the evaluation images.

    An image that is also in the evaluation set (or in ``data.exclude_from_training``) is
    dropped from training with one warning per training set naming it: scores on images the
    model trained on measure memory, not segmentation (coco_tiny val2017 and coco_mini
    val2017, both subsets of COCO val2017, share an image).

    Raises:
        ValueError: a training set is left without images, or the sets hold nothing to learn
            from: no instance at all, or (a family that does not detect) no instance with a
            mask of a mask-supervised class. Training on them would log a loss of 0 and exit 0.
    """
    held_out = excluded_image_keys(cfg)
    fraction = cfg.data.train_fraction
    if not 0 < fraction <= 1:
        raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")
    datasets = []
    for root, split in training_sets(cfg):
        dataset = _training_set(cfg, root, split, transforms, held_out)
        if fraction < 1:
            beyond = _keys_beyond_fraction(dataset, fraction)
            dataset = CocoInstances(
                root,
                split,
                mask_split=cfg.data.mask_split,
                transforms=transforms,
                exclude_images=held_out | beyond,
            )
        datasets.append(dataset)
    _check_learnable(cfg, datasets)
    return datasets


def _training_set(cfg: ExperimentConfig, root: Path, split: str, transforms, held_out: set):
    """One training set without the ``held_out`` images (one warning naming them)."""
    dataset = CocoInstances(
        root, split, mask_split=cfg.data.mask_split, transforms=transforms, exclude_images=held_out
    )
    if dataset.excluded_file_names:
        logger.warning(
            "%s/%s: %d image(s) of the evaluation set %s/%s%s left out of training: %s",
            root,
            split,
            len(dataset.excluded_file_names),
            eval_root(cfg),
            cfg.data.val_split,
            "".join(f" or {entry}" for entry in cfg.data.exclude_from_training),
            ", ".join(dataset.excluded_file_names),
        )
    if len(dataset) == 0:
        raise ValueError(
            f"training set {root}/{split} has no image left once the evaluation images of "
            f"{eval_root(cfg)}/{cfg.data.val_split} are left out; expected a training split "
            f"distinct from the evaluation split (set data.val_root / data.val_split)"
        )
    return dataset


def _check_learnable(cfg: ExperimentConfig, datasets: list[CocoInstances]) -> None:
    """Refuse training sets without instances, or (a family that does not detect) without a
    mask of a mask-supervised class."""
    names = ", ".join(f"{root}/{split}" for root, split in training_sets(cfg))
    num_images = sum(len(d) for d in datasets)
    if sum(d.num_instances for d in datasets) == 0:
        raise ValueError(
            f"training set(s) {names}: {num_images} image(s) and 0 annotations (non-crowd, "
            f"with a box); expected annotated objects to learn from"
        )
    if not get_family(cfg.model.type).detector and sum(d.num_mask_instances for d in datasets) == 0:
        raise ValueError(
            f"training set(s) {names}: no annotation of the mask-supervised classes "
            f"(data.mask_split={cfg.data.mask_split}) has a segmentation; expected masks to "
            f"learn from (the box-prompted model learns only from masks)"
        )


def _keys_beyond_fraction(dataset: CocoInstances, fraction: float) -> set[tuple[str, int, int]]:
    """``image_key`` of the images after the first ``ceil(fraction * len)`` of a fixed
    shuffle (seed 0): what ``data.train_fraction`` leaves out."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    return {image_key(dataset.image_info(i)) for i in order[math.ceil(fraction * len(order)) :]}


def check_image_size(cfg: ExperimentConfig, size_multiple: int) -> None:
    """``data.image_size`` must be a multiple of the model's input size multiple: training
    would pad every batch to one, but prediction, evaluation and export resize to
    ``data.image_size`` exactly."""
    size = cfg.data.image_size
    if size % size_multiple:
        lower = max(size // size_multiple * size_multiple, size_multiple)
        raise ValueError(
            f"data.image_size={size} is not a multiple of {size_multiple}, the input size "
            f"multiple of backbone {cfg.model.backbone}; use {lower} or {lower + size_multiple}"
        )


def training_device(name: str, local_rank: int = 0) -> torch.device:
    """``train.device`` as a device: "auto" is CUDA when available; under torchrun a CUDA
    process takes ``cuda:LOCAL_RANK``."""
    if name not in DEVICE_CHOICES:
        raise ValueError(f"train.device must be auto, cpu or cuda, got {name!r}")
    device = resolve_device(name)  # refuses cuda without CUDA
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def init_from_checkpoint(model: torch.nn.Module, path_or_name: str) -> None:
    """Start every tensor of ``model`` from a checkpoint's weights (``train.init_from``).

    Raises:
        CheckpointError: the checkpoint is unreadable, of another model type, or its tensors
            do not fit the model (one line naming the first mismatch).
    """
    ckpt = load_checkpoint(path_or_name, expected_model_type=model.model_type)
    with torch.no_grad():
        load_model_state(model, ckpt["model"], str(path_or_name))
    logger.info(
        "initialised all %d tensors of the model from %s (step %d)",
        len(ckpt["model"]),
        path_or_name,
        ckpt["step"],
    )


def build_optimizer(model: torch.nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` over every parameter of ``model``."""
    train = cfg.train
    # The fused kernels update every tensor in one pass: Adam's step on the 9M parameters of
    # box_prompted_cpu takes 20 instead of 87 CPU-ms (foreach). Same update rule, deterministic.
    if train.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(),
            lr=train.lr,
            eps=train.adam_eps,
            weight_decay=train.weight_decay,
            fused=True,
        )
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=train.lr,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
            fused=True,
        )
    raise ValueError(f"train.optimizer must be adam or sgd, got {train.optimizer!r}")


def run_training(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the model ``cfg`` describes in the run folder ``out_dir`` (``last.pt``,
    ``config.json``, ``metrics.jsonl``; stale temp files of interrupted writes removed first).

    ``resume`` continues from ``out_dir/last.pt`` (bit-for-bit on CPU). ``overwrite`` deletes
    the run files ``out_dir`` holds once the model and data are built (so a run refused by
    their checks leaves them as they were); without it a new run appends to an old
    ``metrics.jsonl`` (``deepmac train`` refuses such a folder). Returns the engine's summary
    (final step, last losses, last eval metrics, elapsed seconds).
    """
    _check_train_settings(cfg)
    out_dir = Path(out_dir)
    rank, world_size, local_rank = _start_process(out_dir)
    device = training_device(cfg.train.device, local_rank)
    torch.manual_seed(cfg.train.seed)
    model = _training_model(cfg, resume, device)
    if rank:
        # Same initial weights everywhere (DDP also broadcasts rank 0's), but each process
        # draws its own augmentations and instance subsets when the loader runs in-process.
        torch.manual_seed(cfg.train.seed + rank)
    loader = _training_loader(cfg, model.size_multiple, device)
    optimizer = build_optimizer(model, cfg)
    scheduler = _scheduler(optimizer, cfg)
    resume_state = (
        resume_from(out_dir / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler,
                    expected_model_type=model.model_type) if resume else None
    )  # fmt: skip
    model_type = model.model_type
    model = _wrap_for_processes(model, cfg, world_size, device)
    evaluate = _periodic_evaluation(cfg)  # loads the evaluation split before files are removed
    if overwrite and not rank:
        remove_run_files(out_dir)
    summary = train(
        model=model,
        criterion=get_family(cfg.model.type).criterion(cfg),
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=loader,
        total_steps=cfg.train.steps,
        out_dir=out_dir,
        config=cfg.to_dict(),
        model_type=model_type,
        resume=resume_state,
        evaluate=evaluate,
        **loop_settings(cfg, progress),
    )
    if cfg.train.precise_bn_batches and not rank and summary["step"] == cfg.train.steps:
        _precise_bn(cfg, unwrap_model(model), out_dir)
    return summary


def _wrap_for_processes(
    model: torch.nn.Module, cfg: ExperimentConfig, world_size: int, device: torch.device
) -> torch.nn.Module:
    """``model`` in DDP (with synchronised BatchNorm unless turned off) under torchrun."""
    model = wrap_ddp(model, sync_batchnorm=cfg.train.sync_batchnorm)
    if world_size > 1:
        batch = cfg.data.batch_size * cfg.train.accumulate_steps * world_size
        logger.info("%d processes on %s: global batch %d", world_size, device.type, batch)
    return model


def _check_train_settings(cfg: ExperimentConfig) -> None:
    """Refuse ``train`` values no step would use (before anything is built)."""
    if cfg.train.precise_bn_batches < 0:
        raise ValueError(
            f"train.precise_bn_batches must be >= 0 (0: off), got {cfg.train.precise_bn_batches}"
        )


def _precise_bn(cfg: ExperimentConfig, model: torch.nn.Module, out_dir: Path) -> None:
    """The final ``last.pt`` with its BatchNorm statistics recomputed over
    ``train.precise_bn_batches`` training batches (``deepmac.engine.precise_bn``), once: a run
    resumed at its last step finds them done. Batches and instance draws are seeded by
    ``train.seed``, so the statistics are the same however often the run was resumed."""
    ckpt_path = out_dir / "last.pt"
    batches = cfg.train.precise_bn_batches
    ckpt = load_checkpoint(ckpt_path)  # read once: the marker, then the file to rewrite
    if ckpt.get("precise_bn", {}).get("batches") == batches:
        return
    start = time.perf_counter()
    device = next(model.parameters()).device
    torch.manual_seed(cfg.train.seed)
    loader = _training_loader(cfg, model.size_multiple, device)

    def forward(model: torch.nn.Module, batch: Any) -> None:
        images, targets = move_to_device(batch, device)
        model(getattr(images, "tensor", images), targets=targets)

    count = recompute_batch_norm_statistics(
        model, loader, forward, num_batches=batches, amp_dtype=amp_dtype(cfg.train.amp)
    )
    ckpt.update(model=model.state_dict(), precise_bn={"batches": batches})
    write_checkpoint(ckpt_path, ckpt)
    seconds = time.perf_counter() - start
    record = {"type": "precise_bn", "step": cfg.train.steps, "batches": batches,
              "batch_norms": count, "seconds": round(seconds, 1)}  # fmt: skip
    MetricsLog(out_dir / "metrics.jsonl").write(record)
    logger.info("precise BN: %d BatchNorms over %d batches in %.0f s", count, batches, seconds)


def loop_settings(cfg: ExperimentConfig, progress: bool) -> dict[str, Any]:
    """The engine's ``LoopSettings`` keywords of ``cfg.train``."""
    t = cfg.train
    return dict(
        clip_grad_norm=t.clip_grad_norm or None,
        log_every=t.log_every,
        eval_every=t.eval_every,
        checkpoint_every=t.checkpoint_every,
        amp_dtype=amp_dtype(t.amp),
        accumulate_steps=t.accumulate_steps,
        progress=progress,
        tensorboard=t.tensorboard,
    )


def _start_process(out_dir: Path) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` (``torchrun`` or a single process); rank 0 removes
    the stale temp files of interrupted writes, the other ranks log only problems."""
    rank, world_size, local_rank = init_distributed()
    if rank:
        logging.getLogger("deepmac").setLevel(logging.WARNING)
    else:
        for stale in remove_stale_temp_files(out_dir):
            logger.info("removed %s, left by an interrupted write", stale)
    return rank, world_size, local_rank


def _training_model(cfg: ExperimentConfig, resume: bool, device: torch.device) -> torch.nn.Module:
    """The model on ``device``, from ``train.init_from`` when set, its input size checked."""
    # A resumed run's weights come from its checkpoint: reading the backbone's initial
    # weights (and logging about them) again would be wasted.
    model_cfg = dataclasses.replace(cfg.model, backbone_init=None) if resume else cfg.model
    model = build_training_model(cfg, model_cfg).to(device)
    if cfg.train.init_from and not resume:
        init_from_checkpoint(model, cfg.train.init_from)
    check_image_size(cfg, model.size_multiple)
    return model


def _training_loader(cfg: ExperimentConfig, size_multiple: int, device: torch.device):
    """The training batches; a detector's label map (``model.category_ids``,
    ``class_names``) filled in from the data.

    Raises:
        ValueError: ``model.num_classes`` differs from the data's categories (detectors).
    """
    transforms = (
        build_train_transforms(cfg.data.image_size)
        if cfg.data.augment
        else build_eval_transforms(cfg.data.image_size)
    )
    datasets = build_training_datasets(cfg, transforms)
    loader = build_train_loader(
        datasets,
        cfg.data.batch_size,
        cfg.data.num_workers,
        cfg.train.seed,
        size_divisibility=size_multiple,
        pin_memory=device.type == "cuda",
    )
    if get_family(cfg.model.type).detector:
        # The detector scores one class per category of the training data, in contiguous order.
        cfg.model.category_ids = [int(c) for c in datasets[0].category_ids]
        cfg.model.class_names = list(datasets[0].category_names)
        if cfg.model.num_classes != len(cfg.model.category_ids):
            raise ValueError(
                f"model.num_classes={cfg.model.num_classes} but the training data has "
                f"{len(cfg.model.category_ids)} categories"
            )
    return loader


def _scheduler(optimizer: torch.optim.Optimizer, cfg: ExperimentConfig):
    """Warm-up then cosine decay over ``train.steps``."""
    warmup_steps = cfg.train.warmup_steps
    if warmup_steps > cfg.train.steps:
        # A short run (--steps 20 on a preset made for 3000) keeps the preset's warm-up share.
        warmup_steps = cfg.train.steps // 10
        logger.warning(
            "train.warmup_steps=%d exceeds train.steps=%d; using %d warm-up steps",
            cfg.train.warmup_steps,
            cfg.train.steps,
            warmup_steps,
        )
    return build_warmup_cosine(
        optimizer,
        base_lr=cfg.train.lr,
        total_steps=cfg.train.steps,
        warmup_steps=warmup_steps,
        warmup_lr=cfg.train.warmup_lr,
    )


def _periodic_evaluation(cfg: ExperimentConfig):
    """``evaluate(model, step) -> metrics`` on the evaluation split for ``train.eval_every``
    (the split mIoU and AP figures), or None when it is 0."""
    if cfg.train.eval_every <= 0:
        return None
    val = CocoInstances(eval_root(cfg), cfg.data.val_split, mask_split=cfg.data.mask_split)

    def evaluate(model, step: int) -> Mapping[str, float]:
        metrics, _ = evaluate_model(model, cfg, val, max_images=cfg.eval.max_images)
        model.train()
        return {k: v for k, v in metrics.items() if "/mIoU" in k or k.endswith("/AP")}

    return evaluate
