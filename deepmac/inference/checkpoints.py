"""Checkpoints to models ready for inference: a training run's ``last.pt`` or a bundled model
by name, with one-line errors for files that hold something else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from deepmac.config import ExperimentConfig, config_from_dict
from deepmac.engine.checkpoint import CheckpointError, load_checkpoint, state_mismatch
from deepmac.models.families import (
    MODEL_FAMILIES,
    build_model,
    get_family,
    prepare_for_inference,
)

T = TypeVar("T")


def load_model_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict of a deepmac model (a file or a bundled model's name).

    Raises:
        CheckpointError: unreadable, or not a deepmac model checkpoint.
        ValueError: a model type this version does not know.
    """
    ckpt = load_checkpoint(path)
    try:
        get_family(ckpt.get("model_type"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return ckpt


def model_from_checkpoint(
    path: str | Path | dict, *, detector: bool = False, fuse: bool = True
) -> tuple[nn.Module, ExperimentConfig]:
    """Rebuild a trained model for inference from ``OUT/last.pt`` (or its loaded dict).

    Args:
        path: checkpoint file or bundled model name, or the dict ``load_checkpoint`` returned.
        detector: refuse families that do not detect (``ModelFamily.detector``).
        fuse: fold the mask head's BatchNorms into its convolutions, channels_last
            (``prepare_for_inference``): same outputs up to float rounding, 1.1-1.7x faster.

    Returns:
        ``(model in eval mode, its config)``.

    Raises:
        ValueError: a corrupt file, or a family that does not detect when ``detector``.
        CheckpointError: the weights do not fit the model the saved config describes (one
            line naming the first mismatch).
    """
    ckpt = path if isinstance(path, dict) else load_model_checkpoint(path)
    family = get_family(ckpt.get("model_type"))
    if detector and not family.detector:
        detectors = [name for name, f in MODEL_FAMILIES.items() if f.detector]
        raise ValueError(
            f"checkpoint holds a {family.name!r} model, which finds no boxes itself; expected "
            f"one of {tuple(detectors)} (or give boxes: deepmac predict --boxes)"
        )
    cfg = config_from_dict(ckpt["config"])
    cfg.model.backbone_init = None  # the checkpoint holds the trained weights
    model = build_model(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        problem = state_mismatch(model.state_dict(), ckpt["model"])
        if problem is None:
            raise
        source = "the checkpoint" if isinstance(path, dict) else str(path)
        raise CheckpointError(
            f"the weights in {source} do not fit the model its config describes "
            f"(model.type={cfg.model.type!r}, model.backbone={cfg.model.backbone!r}, "
            f"model.mask_head={cfg.model.mask_head!r}): {problem}"
        ) from None
    if fuse:
        return prepare_for_inference(model), cfg
    return model.eval(), cfg


def build_from_checkpoint(build: Callable[..., T], ckpt: dict, path: str, **kwargs: Any) -> T:
    """``build(ckpt, **kwargs)`` (a predictor's ``from_checkpoint``, ``model_from_checkpoint``)
    on a checkpoint already loaded from ``path``, its ``CheckpointError`` naming that file."""
    try:
        return build(ckpt, **kwargs)
    except CheckpointError as err:
        raise CheckpointError(str(err).replace("the checkpoint", str(path), 1)) from None
