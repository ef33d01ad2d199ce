"""Build a model from its config: the one place where configs become constructor calls."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from deepmac.backbones import build_backbone
from deepmac.backbones.fpn import freeze_stages
from deepmac.config import ExperimentConfig, ModelConfig, config_from_dict
from deepmac.mask_heads import fuse_for_inference
from deepmac.models.box_prompted import BoxPromptedDeepMAC
from deepmac.models.deepmac import DeepMAC
from deepmac.models.mask_branch import MaskBranch

#: ImageNet statistics on 0..255 RGB (torchvision-style ResNet weights).
IMAGENET_STATS = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))

#: Input statistics each backbone's weights expect. EfficientNet-Lite was trained with the TF
#: Lite preprocessing (x - 127) / 128. The hourglasses use the official CenterNet means and
#: stds, here in RGB order (the official model feeds BGR; a converted TF checkpoint needs its
#: first convolution's input channels reversed).
DEFAULT_PIXEL_STATS = {
    "efficientnet_lite0": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "hourglass104": (
        (119.9165958, 114.03422265, 104.01362025),
        (70.9150767, 69.89082075, 73.6027665),
    ),
    "hourglass52": (
        (119.9165958, 114.03422265, 104.01362025),
        (70.9150767, 69.89082075, 73.6027665),
    ),
}

MODEL_TYPES = ("box_prompted", "deepmac", "deepmarc")


def _build_deepmarc(cfg: ModelConfig) -> nn.Module:
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
    )


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model ``cfg.type`` describes, loading ``cfg.backbone_init`` if set.

    Raises:
        ValueError: unknown model type, backbone or mask head (with suggestions).
    """
    if cfg.type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {cfg.type!r}; available: {', '.join(MODEL_TYPES)}")
    if cfg.type == "deepmarc":
        return _build_deepmarc(cfg)
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
    if cfg.type == "deepmac":
        return DeepMAC(
            backbone,
            mask_branch,
            num_classes=cfg.num_classes,
            max_detections=cfg.max_detections,
            **common,
        )
    return BoxPromptedDeepMAC(backbone, mask_branch, **common)


def model_from_checkpoint(
    path: str | Path | dict, *, model_types: tuple[str, ...], fuse: bool = True
) -> tuple[nn.Module, ExperimentConfig]:
    """Rebuild a trained model for inference from ``OUT/last.pt`` (or its loaded dict).

    Args:
        path: checkpoint file, or the dict ``load_checkpoint`` returned.
        model_types: the model types the caller can serve.
        fuse: fold the mask head's BatchNorms into its convolutions, channels_last
            (``fuse_for_inference``): same outputs up to float rounding, 1.1-1.7x faster on CPU.

    Returns:
        ``(model in eval mode, its config)``.

    Raises:
        ValueError: a corrupt file, or a model type not in ``model_types``.
    """
    from deepmac.engine import load_checkpoint

    ckpt = path if isinstance(path, dict) else load_checkpoint(path)
    if ckpt.get("model_type") not in model_types:
        raise ValueError(
            f"checkpoint holds a {ckpt.get('model_type')!r} model; expected one of {model_types}"
        )
    cfg = config_from_dict(ckpt["config"])
    cfg.model.backbone_init = None  # the checkpoint holds the trained weights
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    if fuse:
        model.mask_branch.head = fuse_for_inference(model.mask_branch.head)
    return model.eval(), cfg
