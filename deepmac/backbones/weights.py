"""Load backbone weights from a local file (``--init path``): validated, prefix-tolerant, logged.

Accepts a plain ``state_dict`` or a checkpoint dict holding one under ``model``/``state_dict``
(our engine's checkpoints, detectron2/timm-style files). Keys may carry ``module.`` (DDP) and one
of ``COMMON_PREFIXES``; a file holding only a trunk (an ImageNet classifier) is loaded into the
backbone's ``body``. Nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["COMMON_PREFIXES", "load_backbone_weights", "read_state_dict"]

logger = logging.getLogger(__name__)

# Prefixes stripped before matching, tried in this order; the first best match wins.
COMMON_PREFIXES = ("", "backbone.", "model.backbone.", "model.", "encoder.", "body.")
_CONTAINER_KEYS = ("model", "state_dict", "model_state_dict")
_MAX_LISTED = 10


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:_MAX_LISTED]
        return f"a {type(obj).__name__} with keys {keys}{' ...' if len(obj) > _MAX_LISTED else ''}"
    return f"a {type(obj).__name__}"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read ``path`` with ``torch.load(weights_only=True)`` and return its tensor ``state_dict``.

    Args:
        path: a ``.pth``/``.pt`` file holding a state_dict or ``{"model"|"state_dict": ...}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a PyTorch checkpoint, or holds no tensor state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; all mean "not a checkpoint"
        raise ValueError(
            f"{path} is not a PyTorch checkpoint readable with torch.load(weights_only=True): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    for key in _CONTAINER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(
            f"{path}: expected a state_dict (str -> Tensor) or a dict with a 'model' or "
            f"'state_dict' entry, found {_describe(obj)}"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path}: expected a state_dict of tensors, found {_describe(obj)}")
    return tensors


def _remap(
    state_dict: Mapping[str, Tensor], model_keys: set[str], targets: tuple[str, ...]
) -> dict[str, Tensor]:
    """Rename checkpoint keys onto ``model_keys``, choosing the prefix swap that matches most.

    Only keys that match after the swap are renamed; the rest keep their file names (minus a
    DDP ``module.``), so the unexpected keys are reported as they appear in the file.
    """
    keys = {k.removeprefix("module."): v for k, v in state_dict.items()}
    best: tuple[int, str, str] = (-1, "", "")
    for source in COMMON_PREFIXES:
        for target in targets:
            hits = sum(
                1 for k in keys if k.startswith(source) and target + k[len(source) :] in model_keys
            )
            if hits > best[0]:
                best = (hits, source, target)
    _, source, target = best
    renamed = {}
    for key, value in keys.items():
        new_key = target + key[len(source) :] if key.startswith(source) else key
        renamed[new_key if new_key in model_keys else key] = value
    return renamed


def load_backbone_weights(
    backbone: nn.Module, path: str | Path, *, strict: bool = False
) -> tuple[list[str], list[str]]:
    """Load a local weights file into ``backbone`` (in place) and report what did not match.

    Args:
        backbone: the model to fill; a ``body`` submodule (trunk) is also a valid target, so
            ImageNet classifier files load into ResNet/EfficientNet trunks.
        path: local file, see ``read_state_dict``.
        strict: raise if any key is missing or unexpected (nothing is loaded then).

    Returns:
        ``(missing, unexpected)``: backbone keys absent from the file, and file keys (after
        prefix renaming) that the backbone lacks. Both are also logged.

    Raises:
        ValueError: unreadable file, no key matches, a shape mismatch (naming the key and both
            shapes), or ``strict`` with missing/unexpected keys.
    """
    state_dict = read_state_dict(path)
    model_state = backbone.state_dict()
    targets = ("", "body.") if isinstance(getattr(backbone, "body", None), nn.Module) else ("",)
    state_dict = _remap(state_dict, set(model_state), targets)

    matched = [k for k in state_dict if k in model_state]
    if not matched:
        raise ValueError(
            f"{path}: no key matches {type(backbone).__name__}; file keys start with "
            f"{list(state_dict)[:5]}, model keys with {list(model_state)[:5]}"
        )
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in matched
        if state_dict[k].shape != model_state[k].shape
    ]
    if mismatched:
        raise ValueError(
            f"{path}: shape mismatch for {len(mismatched)} keys:\n" + "\n".join(mismatched)
        )
    missing = [k for k in model_state if k not in state_dict]
    unexpected = [k for k in state_dict if k not in model_state]
    if strict and (missing or unexpected):
        raise ValueError(
            f"{path}: strict load failed; missing {missing[:_MAX_LISTED]} ({len(missing)}), "
            f"unexpected {unexpected[:_MAX_LISTED]} ({len(unexpected)})"
        )
    backbone.load_state_dict({k: state_dict[k] for k in matched}, strict=False)
    _log_load(backbone, path, len(matched), len(model_state), matched, missing, unexpected)
    return missing, unexpected


def _log_load(
    backbone: nn.Module,
    path: str | Path,
    loaded: int,
    total: int,
    matched: list[str],
    missing: list[str],
    unexpected: list[str],
) -> None:
    """One summary line of ``load_backbone_weights``; where the file lives is a detail (DEBUG).
    A classifier file fills the whole trunk: its lack of neck keys and its extra classifier
    keys are expected, and worth only a debug line. Trunk keys left at init are a warning."""
    logger.info(
        "backbone weights: %d/%d tensors of %s from %s",
        loaded,
        total,
        type(backbone).__name__,
        Path(path).name,
    )
    logger.debug("backbone weights file: %s", path)
    classifier_file = all(k.startswith("body.") for k in matched) and not any(
        k.startswith("body.") for k in missing
    )
    report = logger.debug if classifier_file else logger.warning
    more = lambda keys: " ..." if len(keys) > _MAX_LISTED else ""  # noqa: E731
    if missing:
        report(
            "%d backbone keys not in %s (kept at init): %s%s",
            len(missing), path, missing[:_MAX_LISTED], more(missing),
        )  # fmt: skip
    if unexpected:
        report(
            "%d keys of %s unused by the backbone: %s%s",
            len(unexpected), path, unexpected[:_MAX_LISTED], more(unexpected),
        )  # fmt: skip
