"""Batching: pad images into one ``(B, 3, H, W)`` tensor and keep targets as a list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from deepmac.data.coco import Target

__all__ = ["ImageBatch", "collate_instances", "targets_to"]


@dataclass
class ImageBatch:
    """Images padded (bottom/right, zeros) to a common size.

    Attributes:
        tensor: float32 ``(B, 3, H, W)``, ``0..255`` RGB, not normalised.
        image_sizes: per image ``(h, w)`` of the valid content, i.e. ``target["size"]`` (the
            unpadded size after resize; the official ``true_image_shapes``).
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ImageBatch:
        """Copy of the batch with its tensor moved to ``device``."""
        return ImageBatch(self.tensor.to(device, non_blocking=non_blocking), list(self.image_sizes))

    def __len__(self) -> int:
        return self.tensor.shape[0]


def collate_instances(
    batch: Sequence[tuple[Tensor, Target]], size_divisibility: int = 1
) -> tuple[ImageBatch, list[Target]]:
    """Collate ``(image, target)`` pairs from ``CocoInstances``.

    Args:
        batch: images float ``(3, H_i, W_i)`` with their targets.
        size_divisibility: round the padded ``H, W`` up to a multiple of this (e.g. the backbone
            stride); 1 keeps ``H_max, W_max``.

    Returns:
        ``ImageBatch`` of ``(B, 3, H, W)`` and the list of the ``B`` targets, unchanged.

    Raises:
        ValueError: empty batch, or an image that is not ``(3, H, W)``.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [image for image, _ in batch]
    for image in images:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"images must be (3, H, W), got {tuple(image.shape)}")
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    tensor = torch.stack(
        [F.pad(image, (0, width - image.shape[2], 0, height - image.shape[1])) for image in images]
    )  # (B, 3, H, W)
    targets = [target for _, target in batch]
    sizes = [
        tuple(target.get("size", image.shape[1:]))
        for image, target in zip(images, targets, strict=True)
    ]
    return ImageBatch(tensor, [(int(h), int(w)) for h, w in sizes]), targets


def targets_to(targets: Sequence[Target], device: torch.device | str) -> list[Target]:
    """Move every tensor in each target dict to ``device`` (other values are kept)."""
    return [
        {k: v.to(device) if isinstance(v, Tensor) else v for k, v in target.items()}
        for target in targets
    ]
