"""Joint image/target transforms: the official Deep-MAC augmentations and the resize-and-pad.

Every transform is a callable ``(image, target) -> (image, target)`` acting on the image (float32
``(3, H, W)``, ``0..255`` RGB) and on the target's boxes and masks together. The augmentations
follow the order and ranges of the official configs (reference/official-implementation.md 4.6);
the resize follows ``keep_aspect_ratio_resizer`` with ``pad_to_max_dimension`` (1.1).

Randomness comes from the ``generator`` given at construction, or the global torch RNG when it is
``None``; the latter is what DataLoader workers seed, so runs with the same loader seed repeat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from deepmac.data.coco import Target, Transform
from deepmac.structures.boxes import clip_boxes

__all__ = [
    "ColorJitter",
    "Compose",
    "RandomHorizontalFlip",
    "RandomSquareCropByScale",
    "ResizePad",
    "build_eval_transforms",
    "build_train_transforms",
    "crop_square",
    "rotate_hue",
]

#: Box keys and the per-instance keys that must be filtered with them (first dim = instances).
_BOX_GROUPS = {
    "boxes": ("labels", "gt_masks", "has_mask"),
    "crowd_boxes": ("crowd_labels", "crowd_masks"),
}
_MASK_KEYS = ("gt_masks", "crowd_masks")


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Integer in ``[low, high)``."""
    return int(torch.randint(low, high, (), generator=generator))


class Compose:
    """Apply joint transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Mirror image, boxes and masks left-right with probability ``p`` (official p = 0.5)."""

    def __init__(self, p: float = 0.5, *, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        if float(torch.rand((), generator=self.generator)) >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        for key in _BOX_GROUPS:
            if key in target:
                boxes = target[key]
                # A pixel column x maps to width - 1 - x, so box edge x maps to width - x.
                target[key] = torch.stack(
                    [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=-1
                )
        for key in _MASK_KEYS:
            if key in target:
                target[key] = target[key].flip(-1)
        return image.flip(-1), target


def rotate_hue(image: Tensor, shift: float) -> Tensor:
    """Shift the HSV hue of ``(3, H, W)`` RGB (any scale, e.g. 0..255) by ``shift`` turns,
    keeping HSV saturation and value: exactly an RGB -> HSV -> RGB round trip with
    ``h' = (h + shift) mod 1``, in one pass on the RGB values.

    Each pixel keeps its max (value) and max - min (chroma); channel ``i`` becomes
    ``v - chroma * clamp(min(k_i, 4 - k_i), 0, 1)`` with ``k_i = (n_i + 6 h') mod 6`` and
    ``n = (5, 3, 1)``, where ``6 h`` is measured in sixths from the dominant channel (argmax
    prefers red, then green, on ties, as ``colorsys``); grey pixels (chroma 0) are unchanged.
    """
    red, green, blue = image
    value, argmax = image.max(0)
    chroma = value - image.min(0).values
    sixths = torch.where(
        argmax == 0,
        green - blue,
        torch.where(argmax == 1, blue - red + 2.0 * chroma, red - green + 4.0 * chroma),
    )
    sixths.div_(torch.where(chroma > 0, chroma, 1.0)).add_(6.0 * shift)
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device)
    k = (offsets[:, None, None] + sixths).remainder_(6.0)  # (3, H, W)
    return value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


class ColorJitter:
    """Hue, contrast, saturation and brightness jitter, in the official order, image only.

    Each adjustment is always applied with a factor drawn uniformly, as the OD API's
    ``random_adjust_{hue,contrast,saturation,brightness}`` do, and the result is clipped to
    ``0..255`` after each step.

    Args:
        hue: max hue shift as a fraction of the hue circle (official 0.02).
        contrast: ``(min, max)`` factor; per channel ``(x - mean) * f + mean``.
        saturation: ``(min, max)`` factor on HSV saturation.
        brightness: max shift as a fraction of 255 (official 0.2).
    """

    def __init__(
        self,
        hue: float = 0.02,
        contrast: tuple[float, float] = (0.8, 1.25),
        saturation: tuple[float, float] = (0.8, 1.25),
        brightness: float = 0.2,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0.0 <= hue <= 0.5 or brightness < 0:
            raise ValueError(
                f"need 0 <= hue <= 0.5 and brightness >= 0, got {hue} and {brightness}"
            )
        for name, (low, high) in (("contrast", contrast), ("saturation", saturation)):
            if not 0 <= low <= high:
                raise ValueError(f"{name} range must satisfy 0 <= min <= max, got ({low}, {high})")
        self.hue, self.contrast, self.saturation, self.brightness = (
            hue,
            contrast,
            saturation,
            brightness,
        )
        self.generator = generator

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        gen = self.generator
        hue = _uniform(-self.hue, self.hue, gen)
        contrast = _uniform(*self.contrast, gen)
        saturation = _uniform(*self.saturation, gen)
        brightness = _uniform(-self.brightness, self.brightness, gen)
        # On 0..255 throughout, with in-place steps: the jitter is most of the data time.
        x = rotate_hue(image, hue)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        x.sub_(mean).mul_(contrast).add_(mean).clamp_(0.0, 255.0)
        # Scaling HSV saturation by f (clipped at 1) moves each channel away from the max:
        # c' = v - f' (v - c) with f' = min(f, v / (v - min)); exact, and avoids an HSV round trip.
        value = x.max(0, keepdim=True).values
        chroma = value - x.min(0, keepdim=True).values
        limit = (value / torch.where(chroma > 0, chroma, 1.0)).clamp_(max=saturation)
        x = value - limit * (value - x)
        return x.clamp_(0.0, 255.0).add_(255.0 * brightness).clamp_(0.0, 255.0), target


def _crop_border(max_border: int, size: int) -> int:
    """OD API ``_get_crop_border``: halve ``max_border`` until it is at most ``size / 2``."""
    exponent = math.ceil(math.log2(2.0 * max_border / size))
    divisor = int(min(max(2.0**exponent, 1.0), max_border))
    return max_border // divisor


def _crop_zero_pad(x: Tensor, top: int, left: int, side: int) -> Tensor:
    """Window ``[top, top + side) x [left, left + side)`` of ``(..., H, W)``, zeros outside."""
    height, width = x.shape[-2:]
    out = x.new_zeros(*x.shape[:-2], side, side)
    y0, y1 = max(top, 0), min(top + side, height)
    x0, x1 = max(left, 0), min(left + side, width)
    if y1 > y0 and x1 > x0:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = x[..., y0:y1, x0:x1]
    return out


class RandomSquareCropByScale:
    """The official ``random_square_crop_by_scale`` (CenterNet's random crop).

    The square side is ``scale * max(H, W)`` with ``scale`` drawn from ``num_scales`` values
    evenly spaced in ``[scale_min, scale_max]``; its centre is drawn at least a border (from
    ``max_border``, halved until it fits) away from the image edges. Parts outside the image are
    zero; boxes are clipped and those entirely outside are dropped (``prune_completely_outside_
    window``), with their labels and masks. Deviation: TF's ``image[ymin:ymax]`` with
    ``ymax <= height - 1`` also blanks the last image row/column; we keep them.
    """

    def __init__(
        self,
        scale_min: float = 0.6,
        scale_max: float = 1.3,
        num_scales: int = 8,
        max_border: int = 128,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0 < scale_min <= scale_max or num_scales < 1 or max_border < 1:
            raise ValueError(
                "need 0 < scale_min <= scale_max, num_scales >= 1, max_border >= 1; got "
                f"{scale_min}, {scale_max}, {num_scales}, {max_border}"
            )
        self.scales = torch.linspace(scale_min, scale_max, num_scales).tolist()
        self.max_border = max_border
        self.generator = generator

    def _centre(self, size: int) -> int:
        border = _crop_border(self.max_border, size)
        if size - border + 1 <= border:  # tiny image: no admissible range, use the middle
            return size // 2
        return _randint(border, size - border + 1, self.generator)

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        scale = self.scales[_randint(0, len(self.scales), self.generator)]
        side = max(int(scale * max(height, width)), 1)
        top = self._centre(height) - side // 2
        left = self._centre(width) - side // 2
        return crop_square(image, target, top, left, side)


def crop_square(
    image: Tensor, target: Target, top: int, left: int, side: int
) -> tuple[Tensor, Target]:
    """Deterministic part of :class:`RandomSquareCropByScale` (window may leave the image).

    Args:
        image: float ``(3, H, W)``.
        target: dict with any of the box/mask keys of ``CocoInstances``.
        top, left: window corner in image pixels (may be negative).
        side: window side in pixels.

    Returns:
        ``(3, side, side)`` image and the target in the window frame; ``size`` is ``(side, side)``.
    """
    target = dict(target)
    shift = torch.tensor([left, top, left, top], dtype=torch.float32)
    for box_key, members in _BOX_GROUPS.items():
        if box_key not in target:
            continue
        boxes = target[box_key] - shift
        keep = (boxes[:, 0] < side) & (boxes[:, 1] < side) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        target[box_key] = clip_boxes(boxes[keep], (side, side))
        for key in members:
            if key in target:
                target[key] = target[key][keep]
    for key in _MASK_KEYS:
        if key in target:
            target[key] = _crop_zero_pad(target[key], top, left, side)
    target["size"] = (side, side)
    return _crop_zero_pad(image, top, left, side), target


class ResizePad:
    """Keep-aspect resize so the long side is ``size``, then zero-pad bottom/right to a square.

    Matches ``keep_aspect_ratio_resizer`` with ``min_dimension = max_dimension = size`` and
    ``pad_to_max_dimension``: bilinear image, nearest-neighbour masks (both with half-pixel
    centres, so they stay aligned), rounded new size. Boxes are
    scaled by the per-axis ratio ``new / old`` of the rounded size, so they stay on the content.
    ``target["size"]`` becomes the unpadded resized size; ``orig_size`` is kept, so predictions
    map back to the original frame by ``orig_size / size``.

    Args:
        size: ``S``, the long side and, with ``pad``, the output side.
        pad: pad to ``S x S`` (official); ``False`` returns the resized image only.
    """

    def __init__(self, size: int, *, pad: bool = True) -> None:
        if size < 1:
            raise ValueError(f"resize size must be a positive int, got {size}")
        self.size = int(size)
        self.pad = pad

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        scale = self.size / max(height, width)
        new_h = min(max(round(height * scale), 1), self.size)
        new_w = min(max(round(width * scale), 1), self.size)
        out_h, out_w = (self.size, self.size) if self.pad else (new_h, new_w)
        # antialias=False: TF's resize (which the official model saw) has no antialiasing.
        resized = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", align_corners=False
        )[0]
        image = F.pad(resized, (0, out_w - new_w, 0, out_h - new_h))
        target = dict(target)
        factor = torch.tensor([new_w / width, new_h / height] * 2, dtype=torch.float32)
        for key in _BOX_GROUPS:
            if key in target:
                target[key] = target[key] * factor
        for key in _MASK_KEYS:
            if key in target:
                target[key] = _resize_masks(target[key], (new_h, new_w), (out_h, out_w))
        target["size"] = (new_h, new_w)
        return image, target


def _resize_masks(masks: Tensor, size: tuple[int, int], padded: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of bool ``(N, H, W)`` masks, zero-padded to ``padded``.

    ``nearest-exact`` samples source pixel ``floor((i + 0.5) * scale)``, the pixel under output
    pixel ``i``'s centre: the half-pixel convention of the image's bilinear resize. Plain
    ``nearest`` samples ``floor(i * scale)`` and shifts masks by up to half an output pixel
    towards the bottom right of the image they supervise.
    """
    if masks.shape[0] == 0:  # F.interpolate rejects empty batches
        return masks.new_zeros(0, *padded)
    resized = F.interpolate(masks[None].to(torch.uint8), size=size, mode="nearest-exact")[0]
    resized = F.pad(resized, (0, padded[1] - size[1], 0, padded[0] - size[0]))
    return resized.bool()


def build_train_transforms(
    image_size: int,
    *,
    flip_prob: float = 0.5,
    color_jitter: bool = True,
    square_crop: bool = True,
    generator: torch.Generator | None = None,
) -> Compose:
    """Official training pipeline: flip, colour jitter, square crop by scale, resize-and-pad."""
    transforms: list[Transform] = [RandomHorizontalFlip(flip_prob, generator=generator)]
    if color_jitter:
        transforms.append(ColorJitter(generator=generator))
    if square_crop:
        transforms.append(RandomSquareCropByScale(generator=generator))
    transforms.append(ResizePad(image_size))
    return Compose(transforms)


def build_eval_transforms(image_size: int) -> Compose:
    """Evaluation pipeline: resize-and-pad only."""
    return Compose([ResizePad(image_size)])
