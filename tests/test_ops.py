"""Ops: hand-worked numerics, a literal-loop oracle, gradients, empty inputs, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from deepmac.ops import (
    assign_fpn_levels,
    batched_nms,
    crop_and_resize,
    heatmap_peaks,
    multilevel_roi_align,
    nms,
    roi_align,
)
from deepmac.structures.boxes import box_iou


def ramp(h: int = 4, w: int = 4, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, h, w) image whose pixel (y, x) holds w * y + x."""
    return torch.arange(h * w, dtype=dtype).view(1, 1, h, w)


# ----------------------------------------------------------------------------- crop_and_resize


def test_crop_and_resize_whole_image_is_identity():
    out = crop_and_resize(ramp(), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 4)
    assert torch.equal(out, ramp())


def test_crop_and_resize_hand_worked_fractional_box():
    # Box x in [1, 3] and y in [0, 2] of a 4 px wide frame: normalised 0.25..0.75 and 0..0.5,
    # i.e. pixels 0.75..2.25 (x) and 0..1.5 (y). 3 samples: x = 0.75, 1.5, 2.25; y = 0, .75, 1.5.
    # The ramp is linear, so bilinear gives 4y + x exactly.
    out = crop_and_resize(ramp(), torch.tensor([[1.0, 0.0, 3.0, 2.0]]), 3)[0, 0]
    expected = torch.tensor([[4 * y + x for x in (0.75, 1.5, 2.25)] for y in (0.0, 0.75, 1.5)])
    torch.testing.assert_close(out, expected)


def test_crop_and_resize_zero_outside_per_neighbour():
    # A box reaching half a pixel above the image: the first sample row sits at y = -0.5, whose
    # upper neighbours are outside and contribute 0, the lower ones (row 0) weigh 0.5.
    image = torch.ones(1, 1, 4, 4)
    box = torch.tensor([[0.0, -0.5 * 4 / 3, 4.0, 4.0]])  # y1 normalised = -0.5 / 3 -> pixel -0.5
    out = crop_and_resize(image, box, (2, 2))[0, 0]
    torch.testing.assert_close(out[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out[1], torch.tensor([1.0, 1.0]))
    far = crop_and_resize(image, torch.tensor([[10.0, 10.0, 20.0, 20.0]]), 3)
    assert torch.count_nonzero(far) == 0


def test_crop_and_resize_size_one_samples_centre():
    out = crop_and_resize(ramp(), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 1)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor(4 * 1.5 + 1.5))


def test_crop_and_resize_image_size_frame():
    # Boxes in an 8x8 image frame that the 4x4 map covers: the same normalised box as (0,0,4,4).
    out = crop_and_resize(ramp(), torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 4, image_size=(8, 8))
    assert torch.equal(out, ramp())


def test_crop_and_resize_routes_boxes_to_their_image():
    features = torch.cat([ramp(), ramp() + 100], dim=0)  # (2, 1, 4, 4)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3)
    out = crop_and_resize(features, boxes, 4, batch_index=torch.tensor([1, 0, 1]))
    assert torch.equal(out[0], ramp()[0] + 100)
    assert torch.equal(out[1], ramp()[0])
    assert torch.equal(out[2], ramp()[0] + 100)


def test_crop_and_resize_empty_boxes():
    out = crop_and_resize(
        torch.rand(2, 3, 8, 8), torch.zeros(0, 4), 5, torch.zeros(0, dtype=torch.long)
    )
    assert out.shape == (0, 3, 5, 5)


def test_crop_and_resize_gradcheck():
    features = torch.rand(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.5, 1.0, 4.0, 3.5], [-1.0, 0.0, 3.0, 6.0]], dtype=torch.float64)
    fn = lambda f: crop_and_resize(f, boxes, 3, torch.tensor([1, 0]))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (features,))


@pytest.mark.parametrize(
    "boxes, index, error",
    [
        (torch.zeros(3, 5), None, "shape \\(N, 4\\)"),
        (torch.zeros(3, 4, dtype=torch.long), None, "floating-point"),
        (torch.zeros(2, 4), torch.tensor([0, 2]), "batch_index values"),
        (torch.zeros(2, 4), torch.tensor([0]), "shape \\(2,\\)"),
    ],
)
def test_crop_and_resize_bad_boxes(boxes, index, error):
    with pytest.raises((ValueError, TypeError), match=error):
        crop_and_resize(torch.rand(2, 1, 4, 4), boxes, 3, index)


def test_crop_and_resize_bad_features():
    with pytest.raises(ValueError, match="\\(B, C, h, w\\)"):
        crop_and_resize(torch.rand(4, 4), torch.zeros(1, 4), 3)


# ----------------------------------------------------------------------------- roi_align


def roi_align_reference(features, boxes, batch_index, out_size, scale, ratio, aligned):
    """A literal per-point port of the published RoIAlign algorithm (slow, obviously right)."""
    num = boxes.shape[0]
    channels, h, w = features.shape[1:]
    out = torch.zeros(num, channels, out_size, out_size, dtype=torch.float64)

    def bilinear(img, y, x):
        if y < -1.0 or y > h or x < -1.0 or x > w:
            return torch.zeros(channels, dtype=torch.float64)
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= h - 1:
            y0 = y1 = h - 1
            y = float(y0)
        else:
            y1 = y0 + 1
        if x0 >= w - 1:
            x0 = x1 = w - 1
            x = float(x0)
        else:
            x1 = x0 + 1
        ly, lx = y - y0, x - x0
        hy, hx = 1 - ly, 1 - lx
        return (
            hy * hx * img[:, y0, x0]
            + hy * lx * img[:, y0, x1]
            + ly * hx * img[:, y1, x0]
            + ly * lx * img[:, y1, x1]
        )

    offset = 0.5 if aligned else 0.0
    for n in range(num):
        img = features[int(batch_index[n])].double()
        x1, y1, x2, y2 = (float(v) * scale - offset for v in boxes[n])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / out_size, rh / out_size
        gy = ratio if ratio > 0 else math.ceil(rh / out_size)
        gx = ratio if ratio > 0 else math.ceil(rw / out_size)
        for i in range(out_size):
            for j in range(out_size):
                acc = torch.zeros(channels, dtype=torch.float64)
                for iy in range(gy):
                    y = y1 + i * bh + (iy + 0.5) * bh / gy
                    for ix in range(gx):
                        x = x1 + j * bw + (ix + 0.5) * bw / gx
                        acc += bilinear(img, y, x)
                out[n, :, i, j] = acc / max(gy * gx, 1)
    return out


def test_roi_align_hand_worked_ramp():
    # Box (0,0,4,4), aligned: start -0.5, bins of 2 px, 2x2 samples at -0.5 + {0.5, 1.5} and
    # -0.5 + {2.5, 3.5}: bin means sit at pixel 0.5 and 2.5 -> 4y + x.
    out = roi_align(ramp(), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 2, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(out[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [0, 2])
def test_roi_align_matches_literal_reference(aligned, ratio):
    gen = torch.Generator().manual_seed(0)
    features = torch.rand(2, 3, 9, 11, generator=gen)
    xy = torch.rand(12, 2, generator=gen) * 30 - 4  # some boxes stick out of the 36x44 image
    wh = torch.rand(12, 2, generator=gen) * 20 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    index = torch.randint(0, 2, (12,), generator=gen)
    ours = roi_align(
        features, boxes, 4, index, spatial_scale=0.25, sampling_ratio=ratio, aligned=aligned
    )
    ref = roi_align_reference(features, boxes, index, 4, 0.25, ratio, aligned)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


def test_roi_align_torchvision_oracle():
    tv_ops = pytest.importorskip("torchvision.ops")
    gen = torch.Generator().manual_seed(1)
    features = torch.rand(2, 4, 16, 16, generator=gen)
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0], [-5.0, 3.0, 20.0, 9.0], [10.0, 10.0, 60.0, 62.0]])
    index = torch.tensor([0, 1, 1])
    rois = torch.cat([index[:, None].float(), boxes], dim=1)
    for ratio in (0, 2):
        ours = roi_align(features, boxes, 7, index, 0.25, ratio, True)
        theirs = tv_ops.roi_align(features, rois, 7, 0.25, ratio, True)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_roi_align_gradcheck_and_empty():
    features = torch.rand(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.5, 1.0, 9.0, 11.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, boxes, 2, None, 0.5, 2), (features,))
    assert roi_align(torch.rand(1, 2, 6, 6), torch.zeros(0, 4), 3).shape == (0, 2, 3, 3)


def test_fpn_level_assignment_and_pooler():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 224.0, 224.0],
            [0.0, 0.0, 112.0, 112.0],
            [0.0, 0.0, 20.0, 20.0],
            [0.0, 0.0, 900.0, 900.0],
        ]
    )
    assert assign_fpn_levels(boxes, 2, 5).tolist() == [4, 3, 2, 5]
    gen = torch.Generator().manual_seed(2)
    feats = [torch.rand(1, 3, 256 // s, 256 // s, generator=gen) for s in (4, 8, 16, 32)]
    pooled = multilevel_roi_align(feats, [4, 8, 16, 32], boxes, 7, sampling_ratio=2)
    for n, level in enumerate([4, 3, 2, 5]):
        direct = roi_align(feats[level - 2], boxes[n : n + 1], 7, None, 1 / 2**level, 2)
        torch.testing.assert_close(pooled[n : n + 1], direct)


# ----------------------------------------------------------------------------- nms and peaks


def test_nms_three_boxes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0, 1) = 81 / 119 = 0.68: suppressed at 0.5, kept at 0.7.
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert nms(boxes, torch.tensor([0.1, 0.8, 0.7]), 0.5).tolist() == [1, 2]


def test_nms_matches_bruteforce_and_batched():
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(200, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=gen) * 40 + 1], 1)
    scores = torch.rand(200, generator=gen)
    keep = nms(boxes, scores, 0.4).tolist()
    order = scores.argsort(descending=True).tolist()
    iou = box_iou(boxes, boxes)
    expected = []
    for i in order:
        if all(iou[i, j] <= 0.4 for j in expected):
            expected.append(i)
    assert keep == expected
    labels = torch.randint(0, 3, (200,), generator=gen)
    kept = batched_nms(boxes, scores, labels, 0.4)
    for c in range(3):
        (idx,) = torch.nonzero(labels == c, as_tuple=True)
        per_class = idx[nms(boxes[idx], scores[idx], 0.4)]
        assert set(per_class.tolist()) == set(kept[labels[kept] == c].tolist())


def test_nms_empty_and_bad_scores():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
    with pytest.raises(ValueError, match="scores must have shape"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_heatmap_peaks_hand_worked():
    heatmap = torch.zeros(1, 2, 5, 5)
    heatmap[0, 0, 1, 1] = 0.9
    heatmap[0, 0, 1, 2] = 0.8  # neighbour of a higher value: not a peak
    heatmap[0, 1, 4, 3] = 0.7
    scores, classes, ys, xs = heatmap_peaks(heatmap, k=2)
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.7]]))
    assert classes.tolist() == [[0, 1]] and ys.tolist() == [[1, 4]] and xs.tolist() == [[1, 3]]
