"""CenterNet targets, losses and decoding against hand-worked cases (digest §4.2-4.4)."""

from __future__ import annotations

import math

import pytest
import torch

from deepmac.models.centernet import (
    centernet_losses,
    decode_detections,
    encode_centernet_targets,
    gaussian_radius,
    penalty_reduced_focal_loss,
)


def test_gaussian_radius_matches_the_official_formula():
    h, w, iou = 10.0, 20.0, 0.7
    # The three roots without the division by 2a, written out.
    r1 = ((h + w) + math.sqrt((h + w) ** 2 - 4 * w * h * (1 - iou) / (1 + iou))) / 2
    r2 = (2 * (h + w) + math.sqrt(4 * (h + w) ** 2 - 16 * (1 - iou) * w * h)) / 2
    r3 = (
        -2 * iou * (h + w) + math.sqrt(4 * iou**2 * (h + w) ** 2 - 16 * iou * (iou - 1) * w * h)
    ) / 2
    radius = gaussian_radius(torch.tensor([h]), torch.tensor([w]), iou)
    assert radius.item() == pytest.approx(min(r1, r2, r3), rel=1e-5)


def test_one_box_puts_its_peak_size_and_offset_at_the_floor_centre():
    # Box (8, 4)-(40, 28) at stride 4: output box (2, 1)-(10, 7), centre (y 4.0, x 6.0).
    boxes = torch.tensor([[8.0, 4.0, 40.0, 28.0], [1.0, 1.0, 7.0, 11.0]])
    labels = torch.tensor([2, 0])
    t = encode_centernet_targets(boxes, labels, num_classes=3, output_size=(16, 16))
    assert t.heatmap.shape == (3, 16, 16)
    assert t.heatmap[2, 4, 6] == 1.0 and (t.heatmap[2] == 1.0).sum() == 1
    assert t.heatmap[1].sum() == 0  # no box of class 1
    assert t.indices.tolist() == [4 * 16 + 6, 1 * 16 + 1]  # box 1 centre (1.5, 1.0) -> (1, 1)
    torch.testing.assert_close(t.sizes, torch.tensor([[6.0, 8.0], [2.5, 1.5]]))
    torch.testing.assert_close(t.offsets, torch.tensor([[0.0, 0.0], [0.5, 0.0]]))
    # The Gaussian falls off with sigma = (2 floor(r) + 1) / 6.
    r = gaussian_radius(torch.tensor([6.0]), torch.tensor([8.0])).floor().item()
    sigma = (2 * r + 1) / 6
    assert t.heatmap[2, 4, 7].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)


def test_focal_loss_against_the_formula():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.5], [0.0, 1.0]]]])
    p = torch.sigmoid(logits)
    expected = (
        -((1 - p[0, 0, 0, 0]) ** 2) * torch.log(p[0, 0, 0, 0])
        - (1 - 0.5) ** 4 * p[0, 0, 0, 1] ** 2 * torch.log(1 - p[0, 0, 0, 1])
        - p[0, 0, 1, 0] ** 2 * torch.log(1 - p[0, 0, 1, 0])
        - (1 - p[0, 0, 1, 1]) ** 2 * torch.log(p[0, 0, 1, 1])
    )
    assert penalty_reduced_focal_loss(logits, target).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    valid = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    masked = penalty_reduced_focal_loss(logits, target, valid).item()
    assert masked < expected.item()


def test_losses_are_zero_for_perfect_size_and_offset_and_finite_without_boxes():
    boxes = torch.tensor([[8.0, 4.0, 40.0, 28.0]])
    t = encode_centernet_targets(boxes, torch.tensor([0]), num_classes=2, output_size=(16, 16))
    sizes = torch.zeros(1, 2, 16, 16)
    sizes[0, :, 4, 6] = t.sizes[0]
    offsets = torch.zeros(1, 2, 16, 16)
    losses = centernet_losses([torch.zeros(1, 2, 16, 16)], [sizes], [offsets], [t])
    assert losses["loss_size"].item() == 0.0 and losses["loss_offset"].item() == 0.0
    empty = encode_centernet_targets(
        torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), num_classes=2, output_size=(16, 16)
    )
    logits = torch.zeros(1, 2, 16, 16, requires_grad=True)
    losses = centernet_losses([logits], [sizes], [offsets], [empty])
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0  # background still learns
    total.backward()


def test_decode_returns_planted_boxes():
    heatmap = torch.full((1, 3, 16, 16), -10.0)
    size = torch.zeros(1, 2, 16, 16)
    offset = torch.zeros(1, 2, 16, 16)
    heatmap[0, 2, 4, 6] = 5.0
    size[0, :, 4, 6] = torch.tensor([6.0, 8.0])
    offset[0, :, 4, 6] = torch.tensor([0.25, 0.5])
    heatmap[0, 0, 12, 3] = 3.0
    size[0, :, 12, 3] = torch.tensor([2.0, 2.0])
    (det,) = decode_detections(heatmap, size, offset, stride=4, k=2, image_sizes=[(60, 64)])
    assert det.labels.tolist() == [2, 0]
    torch.testing.assert_close(
        det.boxes[0], torch.tensor([(6.5 - 4) * 4, (4.25 - 3) * 4, (6.5 + 4) * 4, (4.25 + 3) * 4])
    )
    # Clipped to the unpadded image: y2 = (12 + 1) * 4 = 52 stays, a box past 60 would not.
    torch.testing.assert_close(det.boxes[1], torch.tensor([8.0, 44.0, 16.0, 52.0]))
    assert det.scores[0] == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())
