"""Hand-worked cases for the joint transforms in deepmac.data.transforms."""

from __future__ import annotations

import colorsys

import pytest
import torch

from deepmac.data.transforms import (
    ColorJitter,
    RandomHorizontalFlip,
    RandomSquareCropByScale,
    ResizePad,
    _crop_border,
    build_train_transforms,
    crop_square,
    rotate_hue,
)


def make_sample(height: int = 40, width: int = 60) -> tuple[torch.Tensor, dict]:
    """Image with two rectangular instances whose masks fill their boxes exactly, one crowd."""
    boxes = torch.tensor([[10.0, 4.0, 30.0, 24.0], [40.0, 20.0, 58.0, 40.0]])
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist(), strict=True):
        mask[y1:y2, x1:x2] = True
    crowd = torch.zeros(1, height, width, dtype=torch.bool)
    crowd[0, :4, :6] = True
    target = {
        "boxes": boxes,
        "labels": torch.tensor([0, 1]),
        "gt_masks": masks,
        "has_mask": torch.tensor([True, False]),
        "crowd_boxes": torch.tensor([[0.0, 0.0, 6.0, 4.0]]),
        "crowd_labels": torch.tensor([1]),
        "crowd_masks": crowd,
        "size": (height, width),
    }
    image = torch.arange(3 * height * width, dtype=torch.float32).reshape(3, height, width) % 256
    return image, target


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy box (pixel edges) of each non-empty bool mask."""
    out = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        out.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def test_flip_known_box() -> None:
    image, target = make_sample()
    flipped, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert out["boxes"].tolist() == [[30.0, 4.0, 50.0, 24.0], [2.0, 20.0, 20.0, 40.0]]
    assert torch.equal(mask_boxes(out["gt_masks"]), out["boxes"])
    assert torch.equal(flipped[:, :, 0], image[:, :, -1])
    assert out["crowd_boxes"].tolist() == [[54.0, 0.0, 60.0, 4.0]]
    same, kept = RandomHorizontalFlip(p=0.0)(image, target)
    assert same is image and kept is target


def test_resize_pad_scales_boxes_exactly() -> None:
    image, target = make_sample(40, 60)  # long side 60 -> 30: factor 0.5 on both axes
    resized, out = ResizePad(30)(image, target)
    assert resized.shape == (3, 30, 30)
    assert out["size"] == (20, 30)
    assert torch.equal(out["boxes"], target["boxes"] * 0.5)
    assert out["gt_masks"].shape == (2, 30, 30) and not out["gt_masks"][:, 20:].any()
    assert torch.equal(mask_boxes(out["gt_masks"]), out["boxes"])
    assert resized[:, 20:].eq(0).all()
    # Non-integer ratio: boxes follow the rounded size (33 x 50 for 40 x 60 -> 50).
    _, out = ResizePad(50)(image, target)
    assert out["size"] == (33, 50)
    expected = target["boxes"] * torch.tensor([50 / 60, 33 / 40, 50 / 60, 33 / 40])
    assert torch.allclose(out["boxes"], expected)


def test_resize_without_instances() -> None:
    image, target = make_sample()
    for key in ("boxes", "labels", "gt_masks", "has_mask"):
        target[key] = target[key][:0]
    _, out = ResizePad(32)(image, target)
    assert out["gt_masks"].shape == (0, 32, 32) and out["boxes"].shape == (0, 4)


def test_crop_keeps_masks_and_boxes_consistent() -> None:
    image, target = make_sample()
    # Window x in [20, 70), y in [-10, 40): box 0 is cut, box 1 kept, crowd (x < 6) dropped.
    cropped, out = crop_square(image, target, top=-10, left=20, side=50)
    assert cropped.shape == (3, 50, 50) and out["size"] == (50, 50)
    assert out["boxes"].tolist() == [[0.0, 14.0, 10.0, 34.0], [20.0, 30.0, 38.0, 50.0]]
    assert torch.equal(mask_boxes(out["gt_masks"]), out["boxes"])
    assert out["crowd_boxes"].shape == (0, 4) and out["crowd_masks"].shape == (0, 50, 50)
    assert out["crowd_labels"].shape == (0,)
    assert torch.equal(cropped[:, 10:, :40], image[:, :, 20:])
    assert cropped[:, :10].eq(0).all() and cropped[:, :, 40:].eq(0).all()
    # Entirely outside: everything is dropped, together.
    _, out = crop_square(image, target, top=0, left=0, side=5)
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
    assert out["has_mask"].shape == (0,) and out["gt_masks"].shape == (0, 5, 5)


def test_random_square_crop_follows_masks() -> None:
    image, target = make_sample()
    crop = RandomSquareCropByScale(generator=torch.Generator().manual_seed(0))
    sides = set()
    for _ in range(20):
        cropped, out = crop(image, target)
        sides.add(cropped.shape[-1])
        assert cropped.shape[-2] == cropped.shape[-1] == out["gt_masks"].shape[-1]
        visible = out["gt_masks"].flatten(1).any(1)
        assert torch.allclose(mask_boxes(out["gt_masks"][visible]), out["boxes"][visible])
    allowed = {int(s * 60) for s in torch.linspace(0.6, 1.3, 8).tolist()}
    assert sides <= allowed and len(sides) > 2


def test_crop_border_matches_tf() -> None:
    # OD API _get_crop_border: 128 fits in 480; for 200 it halves to 64; for 100 to 32.
    assert [_crop_border(128, s) for s in (480, 256, 200, 100)] == [128, 128, 64, 32]


@pytest.mark.parametrize("shift", [0.0, 0.02, -0.02, 0.37])
def test_rotate_hue_matches_a_colorsys_round_trip(shift: float) -> None:
    pixels = torch.rand(3, 64, 1, generator=torch.Generator().manual_seed(0))
    pixels[:, 0, 0] = 0.5  # grey
    pixels[:, 1, 0] = torch.tensor([0.7, 0.7, 0.2])  # a tie between red and green
    rotated = rotate_hue(pixels * 255.0, shift) / 255.0
    for i in range(64):
        hue, sat, val = colorsys.rgb_to_hsv(*pixels[:, i, 0].tolist())
        expected = colorsys.hsv_to_rgb((hue + shift) % 1.0, sat, val)
        assert torch.allclose(rotated[:, i, 0], torch.tensor(expected), atol=1e-5)


def test_color_jitter() -> None:
    image, target = make_sample()
    identity = ColorJitter(hue=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), brightness=0.0)
    out, same_target = identity(image, target)
    assert same_target is target and torch.allclose(out, image, atol=1e-3)
    brighter, _ = ColorJitter(0.0, (1.0, 1.0), (1.0, 1.0), 0.0)(torch.full((3, 2, 2), 100.0), {})
    assert torch.allclose(brighter, torch.full((3, 2, 2), 100.0))
    # Saturation 0 gives grey at each pixel's max (HSV value is kept).
    grey, _ = ColorJitter(0.0, (1.0, 1.0), (0.0, 0.0), 0.0)(image, target)
    assert torch.allclose(grey, image.amax(0, keepdim=True).expand_as(image), atol=1e-3)
    # Contrast keeps the per-channel mean when nothing clips.
    flat = torch.full((3, 4, 4), 120.0)
    flat[:, :2] = 100.0
    contrasted, _ = ColorJitter(0.0, (1.2, 1.2), (1.0, 1.0), 0.0)(flat, {})
    assert torch.allclose(contrasted.mean((1, 2)), flat.mean((1, 2)), atol=1e-3)
    assert torch.allclose(contrasted[:, 0, 0], torch.full((3,), 98.0), atol=1e-3)
    jitter = ColorJitter(generator=torch.Generator().manual_seed(1))
    out, _ = jitter(image, target)
    assert out.min() >= 0 and out.max() <= 255 and not torch.equal(out, image)
    with pytest.raises(ValueError, match="contrast range"):
        ColorJitter(contrast=(1.2, 0.8))


def test_train_transforms_are_seeded() -> None:
    image, target = make_sample()

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        transforms = build_train_transforms(32, generator=torch.Generator().manual_seed(seed))
        out, tgt = transforms(image, target)
        assert out.shape == (3, 32, 32) and tgt["gt_masks"].shape[-2:] == (32, 32)
        return out, tgt["boxes"]

    first = run(5)
    again = run(5)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], run(6)[0])


def _centroid(weights: torch.Tensor) -> torch.Tensor:
    """``(y, x)`` centre of mass of a ``(H, W)`` map, in pixel-centre coordinates."""
    weights = weights.float()
    ys = torch.arange(weights.shape[0], dtype=torch.float32)[:, None]
    xs = torch.arange(weights.shape[1], dtype=torch.float32)[None, :]
    total = weights.sum()
    return torch.stack([(weights * ys).sum() / total, (weights * xs).sum() / total])


@pytest.mark.parametrize("size", [384, 320, 100])
@pytest.mark.parametrize("flip", [False, True])
def test_image_mask_and_box_stay_aligned(size: int, flip: bool) -> None:
    """A bright rectangle drawn in the image, its mask and its box go through flip, square
    crop and resize-and-pad, and must stay on one another. A binary mask can only place its
    edges on pixel boundaries, so it is compared with the resized image thresholded at half
    intensity (the same quantisation): the two must be the same pixels, and their centres agree
    to 0.05 px. The box keeps fractional edges and must centre on the resized image's rectangle
    to a quarter pixel (the image, resized without antialiasing, is point-sampled too). Plain
    ``nearest`` mask resizing shifts masks by up to half a pixel and fails."""
    height, width = 480, 640
    y1, y2, x1, x2 = 101, 263, 157, 389
    image = torch.zeros(3, height, width)
    image[:, y1:y2, x1:x2] = 255.0
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[0, y1:y2, x1:x2] = True
    target = {
        "boxes": torch.tensor([[float(x1), float(y1), float(x2), float(y2)]]),
        "labels": torch.tensor([0]),
        "gt_masks": mask,
        "has_mask": torch.tensor([True]),
        "size": (height, width),
    }
    if flip:
        image, target = RandomHorizontalFlip(1.0)(image, target)
    image, target = crop_square(image, target, top=-37, left=45, side=577)
    image, target = ResizePad(size)(image, target)
    resized_mask = target["gt_masks"][0]
    image_rectangle = image[0] > 127.5
    mismatched = int((resized_mask != image_rectangle).sum())
    assert mismatched == 0, f"{mismatched} pixels differ between the mask and the image"
    assert torch.allclose(_centroid(resized_mask), _centroid(image_rectangle), atol=0.05)
    bx1, by1, bx2, by2 = target["boxes"][0].tolist()
    # Box edges are pixel boundaries: pixel-centre coordinates are edge - 0.5.
    box_centre = torch.tensor([(by1 + by2) / 2 - 0.5, (bx1 + bx2) / 2 - 0.5])
    image_centre = _centroid(image[0])
    assert torch.allclose(box_centre, image_centre, atol=0.25), (box_centre, image_centre)
