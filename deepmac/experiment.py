"""Run an experiment from its config: datasets, model, optimiser, engine, evaluation.

This is the glue between ``ExperimentConfig`` and the config-free components; the CLI and the
benchmarks call it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from deepmac.config import ExperimentConfig
from deepmac.data import (
    CocoInstances,
    build_eval_transforms,
    build_train_loader,
    build_train_transforms,
    demo_data_root,
)
from deepmac.engine import build_warmup_cosine, resume_from, train
from deepmac.evaluation import CocoEvaluator, MaskIoUEvaluator
from deepmac.instance_predictor import DeepMACPredictor
from deepmac.models.build import build_model
from deepmac.models.centernet import centernet_losses, encode_centernet_targets
from deepmac.models.instances import gather_training_instances
from deepmac.models.losses import deepmac_mask_loss
from deepmac.predictor import BoxPromptedSegmenter

logger = logging.getLogger(__name__)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}


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


def amp_dtype(name: str) -> torch.dtype | None:
    if name not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {name!r}")
    return AMP_DTYPES[name]


class BoxPromptedStep:
    """One training forward pass: GT boxes of the batch through the model, weighted mask loss.

    Used as the engine's ``forward_step(model, criterion, batch)``; ``criterion`` is unused
    because the loss needs the flattened instances built here.
    """

    def __init__(self, *, mask_size: int, max_instances: int, mask_loss_weight: float) -> None:
        self.mask_size = mask_size
        self.max_instances = max_instances
        self.mask_loss_weight = mask_loss_weight

    def __call__(self, model, criterion, batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        instances = gather_training_instances(
            targets, mask_size=self.mask_size, max_instances=self.max_instances
        )
        outputs = model(images.tensor, instances.boxes, instances.batch_index)
        loss = deepmac_mask_loss(outputs.mask_logits, instances.mask_targets, instances.has_mask)
        return {"loss_mask": self.mask_loss_weight * loss}


class DeepMACStep(BoxPromptedStep):
    """One Deep-MAC training pass: CenterNet losses on every box, mask loss on the
    ground-truth boxes (weighted by ``has_mask``), both averaged over the backbone stacks."""

    def __init__(self, *, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def __call__(self, model, criterion, batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        stride = 4  # every backbone's output stride
        height, width = images.tensor.shape[-2] // stride, images.tensor.shape[-1] // stride
        centernet_targets = [
            encode_centernet_targets(
                t["boxes"],
                t["labels"],
                num_classes=self.num_classes,
                output_size=(height, width),
                stride=stride,
            )
            for t in targets
        ]
        # Padding is not image: the heatmap loss ignores it (official valid-pixel weights).
        valid = torch.zeros(len(targets), 1, height, width, device=images.tensor.device)
        for b, (h, w) in enumerate(images.image_sizes):
            valid[b, :, : math.ceil(h / stride), : math.ceil(w / stride)] = 1
        instances = gather_training_instances(
            targets, mask_size=self.mask_size, max_instances=self.max_instances
        )
        outputs = model(images.tensor, instances.boxes, instances.batch_index)
        losses = centernet_losses(
            outputs.center_heatmap,
            outputs.box_size,
            outputs.center_offset,
            centernet_targets,
            valid,
        )
        mask_loss = deepmac_mask_loss(
            outputs.mask_logits, instances.mask_targets, instances.has_mask
        )
        losses["loss_mask"] = self.mask_loss_weight * mask_loss
        return losses


def evaluate_box_prompted(
    segmenter: BoxPromptedSegmenter,
    dataset: CocoInstances,
    *,
    max_images: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Masks from the ground-truth boxes of every image; split mIoU and mask AP.

    The dataset must have no transforms: masks are pasted into, and compared in, each
    image's original frame. Mask AP treats the GT boxes as detections of score 1.

    Returns:
        ``(metrics, coco_results)``.
    """
    miou = MaskIoUEvaluator()
    coco = CocoEvaluator(dataset.ann_file)
    count = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    for index in tqdm(range(count), desc="eval", disable=not progress, leave=False):
        image, target = dataset[index]
        boxes = target["boxes"]
        category_ids = torch.tensor(
            [dataset.contiguous_to_category_id[int(c)] for c in target["labels"]], dtype=torch.long
        )
        height, width = image.shape[-2:]
        if len(boxes):
            masks = segmenter.predict(image, boxes)
        else:
            masks = torch.zeros(0, height, width, dtype=torch.bool)
        miou.process(masks, target["gt_masks"], category_ids)
        coco.process(target["image_id"], boxes, torch.ones(len(boxes)), category_ids, masks)
    return {**miou.evaluate(), **coco.evaluate()}, coco.results


def evaluate_deepmac(
    predictor: DeepMACPredictor,
    dataset: CocoInstances,
    *,
    max_images: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Detect and segment every image; COCO box and mask AP overall / VOC / non-VOC.

    Returns:
        ``(metrics, coco_results)``.
    """
    coco = CocoEvaluator(dataset.ann_file)
    count = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    for index in tqdm(range(count), desc="eval", disable=not progress, leave=False):
        inst = predictor.predict(dataset.load_image(index))
        image_id = dataset.image_info(index)["id"]
        coco.process(image_id, inst.boxes, inst.scores, inst.category_ids, inst.masks)
    return coco.evaluate(), coco.results


def evaluate_model(
    model,
    cfg: ExperimentConfig,
    dataset: CocoInstances,
    *,
    max_images: int = 0,
    progress: bool = False,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluate a model in memory the way its type is scored: Deep-MAC by detection AP,
    the box-prompted model by mIoU and AP from ground-truth boxes."""
    if cfg.model.type == "deepmac":
        predictor = DeepMACPredictor(
            model,
            image_size=cfg.data.image_size,
            category_ids=cfg.model.category_ids,
            class_names=cfg.model.class_names,
        )
        return evaluate_deepmac(predictor, dataset, max_images=max_images, progress=progress)
    segmenter = BoxPromptedSegmenter(model, image_size=cfg.data.image_size)
    return evaluate_box_prompted(segmenter, dataset, max_images=max_images, progress=progress)


def training_step(cfg: ExperimentConfig) -> BoxPromptedStep:
    """The engine's ``forward_step`` for the model type of ``cfg``."""
    common = dict(
        mask_size=cfg.model.mask_size,
        max_instances=cfg.data.max_instances,
        mask_loss_weight=cfg.train.mask_loss_weight,
    )
    if cfg.model.type == "deepmac":
        return DeepMACStep(num_classes=cfg.model.num_classes, **common)
    return BoxPromptedStep(**common)


def run_training(
    cfg: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train the model ``cfg`` describes; write ``out_dir/{last.pt,config.json,metrics.jsonl}``.

    Args:
        cfg: the experiment.
        out_dir: run folder.
        resume: continue from ``out_dir/last.pt`` (bit-for-bit on CPU).

    Returns:
        The engine's summary (final step, last losses, last eval metrics, elapsed seconds).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    transforms = (
        build_train_transforms(cfg.data.image_size)
        if cfg.data.augment
        else build_eval_transforms(cfg.data.image_size)
    )
    datasets = [
        CocoInstances(root, split, mask_split=cfg.data.mask_split, transforms=transforms)
        for root, split in training_sets(cfg)
    ]
    loader = build_train_loader(
        datasets,
        cfg.data.batch_size,
        cfg.data.num_workers,
        cfg.train.seed,
        size_divisibility=model.size_multiple,
    )
    if cfg.model.type == "deepmac":
        # The heatmap has one channel per class of the training data, in its contiguous order.
        cfg.model.category_ids = [int(c) for c in datasets[0].category_ids]
        cfg.model.class_names = list(datasets[0].category_names)
        if cfg.model.num_classes != len(cfg.model.category_ids):
            raise ValueError(
                f"model.num_classes={cfg.model.num_classes} but the training data has "
                f"{len(cfg.model.category_ids)} categories"
            )
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=cfg.train.lr,
        eps=cfg.train.adam_eps,
        weight_decay=cfg.train.weight_decay,
    )
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
    scheduler = build_warmup_cosine(
        optimizer,
        base_lr=cfg.train.lr,
        total_steps=cfg.train.steps,
        warmup_steps=warmup_steps,
        warmup_lr=cfg.train.warmup_lr,
    )
    resume_state = None
    if resume:
        resume_state = resume_from(
            out_dir / "last.pt",
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            expected_model_type=model.model_type,
        )
    evaluate = None
    if cfg.train.eval_every > 0:
        val = CocoInstances(eval_root(cfg), cfg.data.val_split, mask_split=cfg.data.mask_split)

        def evaluate(model, step: int) -> Mapping[str, float]:
            metrics, _ = evaluate_model(model, cfg, val, max_images=cfg.eval.max_images)
            model.train()
            return {k: v for k, v in metrics.items() if "/mIoU" in k or k.endswith("/AP")}

    return train(
        model=model,
        criterion=None,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=loader,
        total_steps=cfg.train.steps,
        out_dir=out_dir,
        config=cfg.to_dict(),
        model_type=model.model_type,
        forward_step=training_step(cfg),
        resume=resume_state,
        clip_grad_norm=cfg.train.clip_grad_norm or None,
        log_every=cfg.train.log_every,
        eval_every=cfg.train.eval_every,
        evaluate=evaluate,
        checkpoint_every=cfg.train.checkpoint_every,
        amp_dtype=amp_dtype(cfg.train.amp),
        progress=progress,
    )
