"""Overlay instance masks, boxes and labels on an image (PIL only)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def instance_color(index: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour for the ``index``-th instance (golden-ratio hues)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


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


def draw_instances(
    image: Image.Image | np.ndarray | torch.Tensor,
    masks: torch.Tensor | np.ndarray | None = None,
    boxes: torch.Tensor | np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> Image.Image:
    """Blend each mask in its own colour, outline its box and write its label.

    Args:
        image: PIL image, ``(H, W, 3)`` uint8 array, or ``(3, H, W)`` float tensor in 0..255.
        masks: ``(N, H, W)`` bool masks in the image frame, or None.
        boxes: ``(N, 4)`` xyxy boxes in pixels, or None.
        labels: N strings drawn at the top-left corner of each box, or None.
        alpha: mask opacity.

    Returns:
        A new RGB PIL image.
    """
    canvas = _to_uint8_rgb(image).astype(np.float32)
    height, width = canvas.shape[:2]
    if masks is not None:
        masks = torch.as_tensor(masks).bool().cpu().numpy()
        if masks.ndim != 3 or masks.shape[1:] != (height, width):
            raise ValueError(f"masks must be (N, {height}, {width}), got {masks.shape}")
        for i, mask in enumerate(masks):
            canvas[mask] = (1 - alpha) * canvas[mask] + alpha * np.array(instance_color(i))
    out = Image.fromarray(canvas.astype(np.uint8))
    if boxes is not None:
        draw = ImageDraw.Draw(out)
        for i, box in enumerate(torch.as_tensor(boxes).tolist()):
            draw.rectangle(box, outline=instance_color(i), width=2)
            if labels is not None and i < len(labels):
                draw.text((box[0] + 3, box[1] + 2), labels[i], fill=(255, 255, 255))
    return out
