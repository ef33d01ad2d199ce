"""Overlay instance masks, boxes and labels on an image (PIL and NumPy only).

Each instance has one colour (``instance_color`` of its index), the same in every panel, so an
object's ground truth and prediction are matched by colour. Masks are blended and outlined;
labels sit on a filled box of the instance's colour in a TrueType font sized to the image:
DejaVu Sans from matplotlib when it is installed, else Pillow's own scalable default font.
"""

from __future__ import annotations

import colorsys
import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_comparison", "draw_instances", "instance_color", "mask_iou"]

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def instance_color(index: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour for the ``index``-th instance (golden-ratio hues)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


@lru_cache(maxsize=16)
def _font(size: int) -> Font:
    """DejaVu Sans of ``size`` pixels from matplotlib's data (found without importing it), else
    Pillow's default font at that size."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _font_size(height: int, width: int) -> int:
    """About 1/40 of the shorter side, 11 to 48 pixels: readable at thumbnail and full size."""
    return int(np.clip(round(min(height, width) / 40), 11, 48))


def _to_uint8_rgb(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
        image = image.permute(1, 2, 0).cpu().numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image array must be (H, W, 3), got {array.shape}")
    return np.clip(array, 0, 255).astype(np.uint8)


def _as_masks(masks: torch.Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    """``(N, H, W)`` bool NumPy masks, checked against the image size."""
    array = torch.as_tensor(masks).bool().cpu().numpy()
    if array.ndim != 3 or array.shape[1:] != (height, width):
        raise ValueError(f"masks must be (N, {height}, {width}), got {array.shape}")
    return array


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """``(H, W)`` bool: the pixels of ``mask`` within ``width`` pixels of its edge."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N,)`` IoU of paired ``(N, H, W)`` bool masks (0 where both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (relative luminance)."""
    luminance = 0.2126 * background[0] + 0.7152 * background[1] + 0.0722 * background[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    color: tuple[int, int, int],
    font: Font,
    image_width: int,
) -> None:
    """``text`` on a filled box of ``color`` just above ``xy`` (inside the image if no room)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, (bottom - top) // 5)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(xy[0], 0), max(image_width - w, 0))
    y = xy[1] - h if xy[1] - h >= 0 else max(xy[1], 0)
    draw.rectangle((x, y, x + w, y + h), fill=color)
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=font)


def draw_instances(
    image: Image.Image | np.ndarray | torch.Tensor,
    masks: torch.Tensor | np.ndarray | None = None,
    boxes: torch.Tensor | np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.45,
    title: str | None = None,
) -> Image.Image:
    """Blend each mask in its own colour, outline it and its box, and write its label.

    Args:
        image: PIL image, ``(H, W, 3)`` uint8 array, or ``(3, H, W)`` float tensor in 0..255.
        masks: ``(N, H, W)`` bool masks in the image frame, or None.
        boxes: ``(N, 4)`` xyxy boxes in pixels, or None.
        labels: N strings (e.g. ``"cat 0.93"``) drawn above each box, or None.
        alpha: mask opacity.
        title: a caption drawn on a bar at the top-left (a panel's name), or None.

    Returns:
        A new RGB PIL image of the image's size.
    """
    canvas = _to_uint8_rgb(image).astype(np.float32)
    height, width = canvas.shape[:2]
    line = max(1, round(min(height, width) / 300))
    if masks is not None:
        for i, mask in enumerate(_as_masks(masks, height, width)):
            color = np.array(instance_color(i), dtype=np.float32)
            canvas[mask] = (1 - alpha) * canvas[mask] + alpha * color
            canvas[_outline(mask, line)] = color
    out = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = _font(_font_size(height, width))
    if boxes is not None:
        for i, box in enumerate(torch.as_tensor(boxes).reshape(-1, 4).tolist()):
            draw.rectangle(box, outline=instance_color(i), width=line + 1)
            if labels is not None and i < len(labels) and labels[i]:
                _label(draw, (box[0], box[1]), labels[i], instance_color(i), font, width)
    if title:
        _label(draw, (0, 0), title, (32, 32, 32), _font(_font_size(height, width) + 4), width)
    return out


def draw_comparison(
    image: Image.Image | np.ndarray | torch.Tensor,
    gt_masks: torch.Tensor | np.ndarray,
    masks: torch.Tensor | np.ndarray,
    boxes: torch.Tensor | np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float] | np.ndarray | None = None,
    *,
    titles: tuple[str, str] = ("ground truth", "prediction"),
) -> Image.Image:
    """Ground truth beside prediction, one colour per instance in both panels; the prediction's
    labels carry the score (if given) and the IoU with the ground-truth mask.

    Args:
        image: as ``draw_instances``.
        gt_masks, masks: ``(N, H, W)`` bool masks, paired by index.
        boxes: ``(N, 4)`` xyxy boxes (the prompts).
        labels: N class names.
        scores: ``(N,)`` mask scores, or None.
        titles: the two panels' captions.

    Returns:
        An RGB PIL image twice the image's width.
    """
    pixels = _to_uint8_rgb(image)
    height, width = pixels.shape[:2]
    gt, pred = _as_masks(gt_masks, height, width), _as_masks(masks, height, width)
    ious = mask_iou(gt, pred)
    mean = f", mean IoU {ious.mean():.2f}" if len(ious) else ""
    shown = []
    for i, label in enumerate(labels):
        score = "" if scores is None else f" {float(scores[i]):.2f}"
        shown.append(f"{label}{score}, IoU {ious[i]:.2f}")
    left = draw_instances(pixels, gt, boxes, list(labels), title=titles[0])
    right = draw_instances(pixels, pred, boxes, shown, title=f"{titles[1]}{mean}")
    canvas = Image.new("RGB", (2 * width, height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (width, 0))
    return canvas
