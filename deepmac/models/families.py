"""The model-family registry: for each of the paper's three modes, how it is built from its
config, what trains it, how it is scored, served and exported, and what it can do.

    family = get_family(cfg.model.type)       # "box_prompted", "deepmac" or "deepmarc"
    model = family.build(cfg.model)           # or build_model(cfg.model)
    criterion = family.criterion(cfg)         # criterion(model(images, targets=t), t) -> losses
    evaluate = family.load("evaluator")       # (model, cfg, dataset, ...) -> (metrics, results)

Every family is crop-then-segment behind one mask-branch contract
(``deepmac.models.mask_branch``): only where the boxes come from differs. This is the one place
that dispatches on the model type; code elsewhere asks the registry. The evaluator, the
predictor and the ONNX wrapper live in the layers above the models (``evaluation``,
``inference``, ``export``) and are named here as ``"module:attribute"``, imported on use, so
that every layer may read a family's capabilities without an import pointing upwards.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from torch import nn

from deepmac.backbones import build_backbone
from deepmac.backbones.fpn import freeze_stages
from deepmac.config import ExperimentConfig, ModelConfig
from deepmac.mask_heads import fuse_for_inference
from deepmac.models.box_prompted import BoxPromptedCriterion, BoxPromptedDeepMAC
from deepmac.models.deepmac import DeepMAC, DeepMACCriterion
from deepmac.models.instances import InstanceSampler
from deepmac.models.mask_branch import MaskBranch

#: ImageNet statistics on 0..255 RGB (torchvision-style ResNet weights).
IMAGENET_STATS = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))

#: Input statistics each backbone's weights expect. EfficientNet-Lite was trained with the TF
#: Lite preprocessing (x - 127) / 128. The hourglasses use the official CenterNet means and
#: stds, here in RGB order (the official model feeds BGR; a converted TF checkpoint needs its
#: first convolution's input channels reversed).
DEFAULT_PIXEL_STATS = {
    "efficientnet_lite0": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "efficientnet_lite2": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "efficientnet_lite0_hourglass20": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "hourglass104": (
        (119.9165958, 114.03422265, 104.01362025),
        (70.9150767, 69.89082075, 73.6027665),
    ),
    "hourglass52": (
        (119.9165958, 114.03422265, 104.01362025),
        (70.9150767, 69.89082075, 73.6027665),
    ),
}


def _build_deepmarc(cfg: ModelConfig, sampler: InstanceSampler | None) -> nn.Module:
    """Deep-MARC from its config: FPN on ``cfg.backbone``'s trunk, RPN, box and mask branches."""
    from deepmac.backbones import build_fpn_backbone
    from deepmac.models.deepmarc import (
        DeepMARC,
        RegionProposalNetwork,
        RoIBoxHeads,
        RoIMaskBranch,
        check_mask_train_boxes,
    )

    check_mask_train_boxes(cfg.mask_train_boxes)  # before the (slow) backbone is built
    rcnn = cfg.rcnn
    backbone = build_fpn_backbone(
        cfg.backbone,
        init=cfg.backbone_init,
        out_channels=rcnn.fpn_channels,
        norm=rcnn.backbone_norm,
        freeze_at=rcnn.freeze_at,
    )
    pooled_strides = backbone.strides[:4]  # RoI heads pool P2-P5; the RPN also uses P6
    rpn = RegionProposalNetwork(
        rcnn.fpn_channels,
        strides=backbone.strides,
        pre_nms_topk=(rcnn.rpn_pre_nms_topk_train, rcnn.rpn_pre_nms_topk_test),
        post_nms_topk=(rcnn.rpn_post_nms_topk_train, rcnn.rpn_post_nms_topk_test),
        batch_size_per_image=rcnn.rpn_batch_size_per_image,
    )
    roi_heads = RoIBoxHeads(
        rcnn.fpn_channels,
        strides=pooled_strides,
        num_classes=cfg.num_classes,
        fc_dim=rcnn.box_head_fc_dim,
        batch_size_per_image=rcnn.roi_batch_size_per_image,
        score_threshold=rcnn.score_threshold,
        nms_threshold=rcnn.nms_threshold,
        detections_per_image=cfg.max_detections,
    )
    mask_branch = RoIMaskBranch(
        cfg.mask_head,
        rcnn.fpn_channels,
        crop_size=cfg.mask_size,
        num_init_channels=cfg.num_init_channels,
        strides=pooled_strides,
    )
    mean, std = DEFAULT_PIXEL_STATS.get(cfg.backbone, IMAGENET_STATS)
    return DeepMARC(
        backbone,
        rpn,
        roi_heads,
        mask_branch,
        mask_train_boxes=cfg.mask_train_boxes,
        pixel_mean=cfg.pixel_mean or mean,
        pixel_std=cfg.pixel_std or std,
        instance_sampler=sampler,
    )


def _embedding_model_parts(cfg: ModelConfig) -> tuple[nn.Module, MaskBranch, dict[str, Any]]:
    """Backbone, mask branch and the embedding-head arguments of the box-prompted network
    (shared by Deep-MAC)."""
    backbone = build_backbone(cfg.backbone, init=cfg.backbone_init)
    if cfg.freeze_at:
        if not hasattr(backbone, "body"):
            raise ValueError(
                f"model.freeze_at={cfg.freeze_at} needs a trunk with stages (efficientnet_lite0, "
                f"resnet*); backbone {cfg.backbone!r} has none: use model.freeze_at=0"
            )
        freeze_stages(backbone.body, cfg.freeze_at)
    mask_branch = MaskBranch(
        cfg.mask_head,
        pixel_embedding_dim=cfg.pixel_embedding_dim,
        instance_embedding_dim=cfg.instance_embedding_dim,
        mask_size=cfg.mask_size,
        num_init_channels=cfg.num_init_channels,
        use_xy=cfg.use_xy,
        use_instance_embedding=cfg.use_instance_embedding,
    )
    mean, std = DEFAULT_PIXEL_STATS.get(cfg.backbone, IMAGENET_STATS)
    common = dict(
        embedding_head_channels=cfg.embedding_head_channels,
        pixel_mean=cfg.pixel_mean or mean,
        pixel_std=cfg.pixel_std or std,
    )
    return backbone, mask_branch, common


def _build_box_prompted(cfg: ModelConfig, sampler: InstanceSampler | None) -> nn.Module:
    backbone, mask_branch, common = _embedding_model_parts(cfg)
    return BoxPromptedDeepMAC(backbone, mask_branch, instance_sampler=sampler, **common)


def _build_deepmac(cfg: ModelConfig, sampler: InstanceSampler | None) -> nn.Module:
    backbone, mask_branch, common = _embedding_model_parts(cfg)
    return DeepMAC(
        backbone,
        mask_branch,
        num_classes=cfg.num_classes,
        max_detections=cfg.max_detections,
        instance_sampler=sampler,
        **common,
    )


def _deepmarc_criterion(cfg: ExperimentConfig) -> Callable:
    from deepmac.models.deepmarc import DeepMARCCriterion

    return DeepMARCCriterion(mask_loss_weight=cfg.train.mask_loss_weight)


@dataclass(frozen=True)
class ModelFamily:
    """One mode of the paper and everything that serves it.

    Attributes:
        name: ``model.type`` and the checkpoints' ``model_type``.
        summary: one line for listings.
        builder: ``(model config, instance sampler or None) -> model`` (use ``build``).
        criterion: ``experiment config -> criterion(outputs, targets) -> named losses``.
        detector: finds its own boxes (``predictor`` takes images alone; scored by detection
            AP). Every family also takes box prompts through the mask-branch contract.
        evaluator: ``"module:function"``: ``(model, cfg, dataset, *, max_images, progress) ->
            (metrics, coco_results)``, the way the family is scored.
        predictor: ``"module:class"`` that serves the family on images alone
            (``from_checkpoint``; the box-prompted family's needs boxes too).
        onnx_wrapper: ``"module:class"`` of its own ONNX graph.
    """

    name: str
    summary: str
    builder: Callable[[ModelConfig, InstanceSampler | None], nn.Module]
    criterion: Callable[[ExperimentConfig], Callable]
    detector: bool
    evaluator: str
    predictor: str
    onnx_wrapper: str

    def build(self, cfg: ModelConfig, *, instance_sampler: InstanceSampler | None = None):
        """The model ``cfg`` describes (``cfg.backbone_init`` loaded if set)."""
        return self.builder(cfg, instance_sampler)

    def load(self, part: str) -> Any:
        """The ``evaluator``, ``predictor`` or ``onnx_wrapper`` object, imported now."""
        module, _, attribute = getattr(self, part).partition(":")
        return getattr(import_module(module), attribute)


_SEGMENTER = "deepmac.inference.segmenter:BoxPromptedSegmenter"
_DETECTOR = "deepmac.inference.detector:DeepMACPredictor"
_EVALUATE = "deepmac.evaluation.evaluate"

#: Every family, by ``model.type``.
MODEL_FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (
        ModelFamily(
            name="box_prompted",
            summary="boxes in, masks out (no detector; paper Sec. 6)",
            builder=_build_box_prompted,
            criterion=lambda cfg: BoxPromptedCriterion(mask_loss_weight=cfg.train.mask_loss_weight),
            detector=False,
            evaluator=f"{_EVALUATE}:evaluate_from_gt_boxes",
            predictor=_SEGMENTER,
            onnx_wrapper="deepmac.export.onnx:BoxPromptedOnnx",
        ),
        ModelFamily(
            name="deepmac",
            summary="CenterNet detections, crop-then-segment masks (paper Sec. 3-4)",
            builder=_build_deepmac,
            criterion=lambda cfg: DeepMACCriterion(
                num_classes=cfg.model.num_classes, mask_loss_weight=cfg.train.mask_loss_weight
            ),
            detector=True,
            evaluator=f"{_EVALUATE}:evaluate_detections",
            predictor=_DETECTOR,
            onnx_wrapper="deepmac.export.onnx:DeepMACOnnx",
        ),
        ModelFamily(
            name="deepmarc",
            summary="Mask R-CNN detections, a deep class-agnostic mask head (paper Sec. 3, 5)",
            builder=_build_deepmarc,
            criterion=_deepmarc_criterion,
            detector=True,
            evaluator=f"{_EVALUATE}:evaluate_detections",
            predictor=_DETECTOR,
            onnx_wrapper="deepmac.export.onnx:DeepMARCOnnx",
        ),
    )
}

#: The ``model.type`` values.
MODEL_TYPES = tuple(MODEL_FAMILIES)


def get_family(model_type: str | None) -> ModelFamily:
    """Raises ``ValueError`` for an unknown type, naming the valid ones (and a close match)."""
    if model_type not in MODEL_FAMILIES:
        close = difflib.get_close_matches(str(model_type), MODEL_FAMILIES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown model type {model_type!r}{hint}; available: {', '.join(MODEL_TYPES)}"
        )
    return MODEL_FAMILIES[model_type]


def build_model(cfg: ModelConfig, *, instance_sampler: InstanceSampler | None = None) -> nn.Module:
    """Build the model ``cfg.type`` describes, loading ``cfg.backbone_init`` if set.

    Args:
        cfg: the model config.
        instance_sampler: the ground-truth boxes its mask branch trains on (default: every box,
            at most 100 per image, as the official models).

    Raises:
        ValueError: unknown model type, backbone or mask head (with suggestions).
    """
    return get_family(cfg.type).build(cfg, instance_sampler=instance_sampler)


def build_training_model(cfg: ExperimentConfig, model_cfg: ModelConfig | None = None) -> nn.Module:
    """``build_model`` of ``model_cfg`` (default ``cfg.model``) with the instance sampler the
    experiment trains with (``data.max_instances``, ``train.mask_head_instances``)."""
    sampler = InstanceSampler(cfg.data.max_instances, cfg.train.mask_head_instances)
    return build_model(model_cfg or cfg.model, instance_sampler=sampler)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Fold the mask head's BatchNorms into its convolutions, channels_last
    (``fuse_for_inference``): same outputs up to float rounding, 1.1-1.7x faster on CPU."""
    model.mask_branch.head = fuse_for_inference(model.mask_branch.head)
    return model.eval()
