"""Bundled models: trained checkpoints shipped inside the package, used by name.

``deepmac/assets/models/NAME.pt`` is a weights-only checkpoint (the format of
``deepmac.engine.checkpoint``, float tensors stored as float16, no optimizer state) whose
``extra["model_card"]`` says how it was made and what it scores. Everywhere a checkpoint path
is taken (``deepmac predict/eval/export``, ``BoxPromptedSegmenter.from_checkpoint``,
``deepmac train --init``) a bundled name works too::

    deepmac predict box-prompted-all --images photos/ --boxes boxes.json --out masks.json
    BoxPromptedSegmenter.from_pretrained("box-prompted-voc")

This module imports nothing heavy at load time: the checkpoint loader resolves names through
it, and ``deepmac models`` lists the cards.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

#: Where the bundled checkpoints live (package data).
MODELS_DIR = Path(__file__).resolve().parents[1] / "assets" / "models"

#: The evaluation splits of a card's metrics: every instance, VOC classes, the 60 others.
SPLITS = ("all", "voc", "nonvoc")

#: What every model card holds (``deepmac.engine.pretrained.check_card``).
CARD_KEYS = (
    "name",
    "summary",
    "command",
    "commit",
    "preset",
    "training_images",
    "training_image_list_sha256",
    "steps",
    "train_wall_seconds",
    "machine",
    "storage_dtype",
    "eval_set",
    "metrics",
    "filled_box",
    "storage_metric_change",
)


def bundled_names(models_dir: Path | None = None) -> list[str]:
    """Names of the bundled models, sorted (the stems of ``MODELS_DIR/*.pt``)."""
    folder = MODELS_DIR if models_dir is None else models_dir
    return sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []


def _looks_like_name(text: str) -> bool:
    """A bare word such as ``box-prompted-al``: no folder and no file suffix, so a missing
    file of that name is more likely a misspelt model than a path."""
    return os.sep not in text and "/" not in text and not Path(text).suffix


def resolve_model_path(path_or_name: str | os.PathLike, models_dir: Path | None = None) -> Path:
    """The checkpoint file ``path_or_name`` stands for.

    An existing file wins; otherwise a bundled model's name gives its file. Anything else is
    returned as a path (the loader then says it does not exist), except a bare word, which
    gets a did-you-mean naming the bundled models.

    Raises:
        ValueError: a bare word that is neither a file nor a bundled name.
    """
    path = Path(path_or_name)
    if path.is_file():
        return path
    folder = MODELS_DIR if models_dir is None else models_dir
    names = bundled_names(folder)
    text = os.fspath(path_or_name)
    if text in names:
        return folder / f"{text}.pt"
    if _looks_like_name(text):
        close = difflib.get_close_matches(text, names, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ValueError(
            f"{text!r} is neither a checkpoint file nor a bundled model; {hint}"
            f"expected a path such as runs/NAME/last.pt or one of the bundled models: "
            f"{', '.join(names) or 'none installed'} (deepmac models lists them)"
        )
    return path


def read_card(path_or_name: str | os.PathLike, models_dir: Path | None = None) -> dict[str, Any]:
    """The model card of a bundled model (or of any checkpoint that carries one).

    Raises:
        ValueError: the file is no checkpoint, or holds no model card.
    """
    import torch  # the file is read here, not by deepmac.engine, whose loader resolves names

    path = resolve_model_path(path_or_name, models_dir)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # zip, pickle and EOF errors all mean "unreadable"
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__})") from None
    card = ckpt.get("extra", {}).get("model_card") if isinstance(ckpt, dict) else None
    if not isinstance(card, dict):
        raise ValueError(f"{path} holds no model card (extra['model_card'])")
    check_card(card)
    return card


def check_card(card: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the missing fields of a model card."""
    missing = [key for key in CARD_KEYS if key not in card]
    missing += [
        f"{key}[{split!r}]"
        for key in ("metrics", "filled_box")
        if isinstance(card.get(key), dict)
        for split in SPLITS
        if split not in card[key]
    ]
    if missing:
        raise ValueError(f"model card of {card.get('name')!r} lacks {', '.join(missing)}")


def card_one_line(card: dict[str, Any]) -> str:
    """``summary; mIoU all/VOC/non-VOC a/b/c (filled box x/y/z) on EVAL_SET``."""
    model = "/".join(f"{card['metrics'][s]:.3f}" for s in SPLITS)
    box = "/".join(f"{card['filled_box'][s]:.3f}" for s in SPLITS)
    return (
        f"{card['summary']}; mIoU all/VOC/non-VOC {model} (filled box {box}) on {card['eval_set']}"
    )


def card_markdown(card: dict[str, Any]) -> str:
    """The card as the Markdown section ``docs/models.md`` holds for each model."""
    rows = "\n".join(
        f"| {label} | {card['metrics'][s]:.3f} | {card['filled_box'][s]:.3f} | "
        f"{card['metrics'][s] - card['filled_box'][s]:+.3f} |"
        for s, label in zip(SPLITS, ("all", "VOC", "non-VOC"), strict=True)
    )
    return "\n".join(
        [
            f"## {card['name']}",
            "",
            card["summary"],
            "",
            f"- Reproduce: `{card['command']}`",
            f"- Commit: `{card['commit']}`; preset `{card['preset']}`",
            f"- Training images: {card['training_images']} (sha256 of the sorted file-name "
            f"list: `{card['training_image_list_sha256'][:16]}...`)",
            f"- Steps: {card['steps']}; training wall time {card['train_wall_seconds'] / 60:.0f}"
            f" min on {card['machine']}",
            f"- Stored as {card['storage_dtype']}: the largest change of a split mIoU against "
            f"the float32 weights is {card['storage_metric_change']:.4f}",
            "",
            f"mIoU on {card['eval_set']} from ground-truth boxes:",
            "",
            "| split | model | filled box | margin |",
            "|---|---|---|---|",
            rows,
        ]
    )


def write_bundled_checkpoint(
    ckpt: dict[str, Any], dst: str | os.PathLike, card: dict[str, Any], dtype: Any = None
) -> Path:
    """Write the weights of a loaded training checkpoint ``ckpt`` as a bundled model.

    Floating-point tensors are stored as ``dtype`` (default float16: half the size; they are
    cast back to the model's float32 when loaded); integer tensors (BatchNorm step counts)
    stay as they are. Overflow is refused here; what rounding and underflow cost is measured
    by re-scoring the stored file (the card's ``storage_metric_change``). Optimizer,
    scheduler and RNG states are dropped. Written atomically.
    """
    import torch

    from deepmac.utils.io import atomic_write

    check_card(card)
    dtype = torch.float16 if dtype is None else dtype
    weights = {
        key: value.to(dtype) if value.is_floating_point() else value
        for key, value in ckpt["model"].items()
    }
    bad = [key for key, value in weights.items() if value.is_floating_point()]
    bad = [key for key in bad if not torch.isfinite(weights[key]).all()]
    if bad:
        raise ValueError(f"{len(bad)} tensor(s) overflow {dtype} (first {bad[0]})")
    bundled = {
        "format_version": ckpt["format_version"],
        "model_type": ckpt["model_type"],
        "step": ckpt["step"],
        "model": weights,
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "config": ckpt["config"],
        "git_sha": ckpt.get("git_sha"),
        "extra": {"model_card": card},
    }
    return atomic_write(dst, lambda f: torch.save(bundled, f))
