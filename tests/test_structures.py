"""Box converters, IoU, mask targets and mask pasting."""

from __future__ import annotations

import pytest
import torch

from deepmac.structures import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    clip_boxes,
)
from deepmac.structures.masks import crop_mask_targets, paste_masks_in_image


def test_box_format_round_trips():
    xyxy = torch.tensor([[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, 0.5, 0.25]])
    assert torch.equal(box_xywh_to_xyxy(torch.tensor([[1.0, 2.0, 10.0, 5.0]])), xyxy[:1])
    torch.testing.assert_close(box_xywh_to_xyxy(box_xyxy_to_xywh(xyxy)), xyxy)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy)
    assert box_xyxy_to_cxcywh(xyxy)[0].tolist() == [6.0, 4.5, 10.0, 5.0]
    assert box_area(xyxy).tolist() == [50.0, 0.125]


def test_box_iou_hand_worked_and_degenerate():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    iou = box_iou(a, b)
    torch.testing.assert_close(iou[0], torch.tensor([1 / 7, 1.0, 0.0]))
    assert torch.equal(iou[1], torch.zeros(3))  # zero-area pairs: 0, never NaN
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 3)


def test_clip_boxes():
    clipped = clip_boxes(torch.tensor([[-5.0, -1.0, 50.0, 8.0]]), (10, 20))
    assert clipped.tolist() == [[0.0, 0.0, 20.0, 8.0]]


def test_crop_mask_targets_are_soft_and_exact_inside():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, :, :5] = True  # left half
    masks[1] = True
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 6.0, 6.0]])
    targets = crop_mask_targets(masks, boxes, 4)
    assert targets.shape == (2, 4, 4) and targets.dtype == torch.float32
    # Box 0 spans pixels 0..9 (TF convention): samples at x = 0, 3, 6, 9 -> 1, 1, 0, 0.
    assert targets[0, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert torch.equal(targets[1], torch.ones(4, 4))
    half = crop_mask_targets(masks[:1], torch.tensor([[0.0, 0.0, 10.0, 10.0]]), 7)
    assert 0 < half[0, 0, 3] < 1  # sample x = 4.5 straddles the mask edge: soft, not binarised


def test_crop_then_paste_round_trip():
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 60, 80, dtype=torch.bool)
    boxes = []
    for i, (x, y, w, h) in enumerate([(5, 5, 30, 20), (40, 10, 25, 45), (0, 30, 80, 30)]):
        masks[i, y : y + h, x : x + w] = torch.rand(h, w, generator=gen) > -1  # filled rectangle
        boxes.append([x, y, x + w, y + h])
    boxes = torch.tensor(boxes, dtype=torch.float32)
    pasted = paste_masks_in_image(crop_mask_targets(masks, boxes, 32), boxes, (60, 80))
    inter = (pasted & masks).flatten(1).sum(1).float()
    union = (pasted | masks).flatten(1).sum(1).float()
    assert (inter / union).min() > 0.95


def test_paste_threshold_is_strict_and_zero_outside_box():
    probs = torch.full((1, 4, 4), 0.5)
    box = torch.tensor([[2.0, 2.0, 6.0, 6.0]])
    assert not paste_masks_in_image(probs, box, (10, 10)).any()  # 0.5 is not > 0.5
    soft = paste_masks_in_image(torch.ones(1, 1, 4, 4), box, (10, 10), threshold=None)
    assert soft.dtype == torch.float32
    assert soft[0, :, :2].sum() == 0 and soft[0, :, 7:].sum() == 0
    assert soft[0, 3:6, 3:6].min() == 1.0


def test_paste_box_outside_image_and_empty():
    out = paste_masks_in_image(
        torch.ones(1, 8, 8), torch.tensor([[50.0, 50.0, 70.0, 70.0]]), (20, 20)
    )
    assert not out.any()
    assert paste_masks_in_image(torch.zeros(0, 8, 8), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)


def test_mask_ops_bad_input():
    with pytest.raises(ValueError, match="same N"):
        crop_mask_targets(torch.zeros(2, 5, 5, dtype=torch.bool), torch.zeros(3, 4), 4)
    with pytest.raises(ValueError, match="\\(N, 1, S, S\\)"):
        paste_masks_in_image(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4), (5, 5))
    with pytest.raises(ValueError, match="shape \\(N, 4\\)"):
        paste_masks_in_image(torch.zeros(2, 4, 4), torch.zeros(2, 5), (5, 5))
