"""Time the crop ops: 128 boxes on a (2, 256, 128, 128) map, forward and forward+backward.

Usage:  python benchmarks/ops.py [--threads 2] [--repeats 10] [--boxes 128]

Printed per op: median ms per call. As a reference measured in the same run, the naive
batched crop (copy the feature map once per box, then one ``grid_sample``) shows what stacking
the boxes of an image into one ``grid_sample`` call saves. Mask pasting (100 masks of 32x32
into a 640x480 image) is timed against a full-image ``grid_sample`` paste.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import time_ms

from deepmac.ops import crop_and_resize, roi_align
from deepmac.ops.crop_and_resize import crop_sample_points
from deepmac.structures.masks import paste_masks_in_image


def naive_crop(features, boxes, batch_index, size):
    """Reference: one feature-map copy per box, then a batched grid_sample."""
    h, w = features.shape[-2:]
    ys = crop_sample_points(boxes[:, 1] / h, boxes[:, 3] / h, size, h - 1)
    xs = crop_sample_points(boxes[:, 0] / w, boxes[:, 2] / w, size, w - 1)
    grid = torch.stack(
        [
            ((2 * xs + 1) / w - 1)[:, None, :].expand(-1, size, size),
            ((2 * ys + 1) / h - 1)[:, :, None].expand(-1, size, size),
        ],
        dim=-1,
    )
    return F.grid_sample(features[batch_index], grid, align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--boxes", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 256, 128, 128, generator=gen)
    xy = torch.rand(args.boxes, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + 4 + torch.rand(args.boxes, 2, generator=gen) * 60], dim=1)
    batch_index = torch.arange(args.boxes) % 2
    grad_features = features.clone().requires_grad_(True)

    def forward_backward(op):
        def run():
            op(grad_features).sum().backward()
            grad_features.grad = None

        return run

    crop = lambda f: crop_and_resize(f, boxes, 32, batch_index)  # noqa: E731
    naive = lambda f: naive_crop(f, boxes, batch_index, 32)  # noqa: E731
    align = lambda f: roi_align(f, boxes / 4, 14, batch_index, 1.0, sampling_ratio=2)  # noqa: E731
    align_adaptive = lambda f: roi_align(f, boxes / 4, 14, batch_index, 1.0, sampling_ratio=0)  # noqa: E731
    # The naive reference re-derives sample positions through grid_sample's normalised
    # coordinates; crop_and_resize keeps TF's float32 positions: they differ by ~1e-5.
    torch.testing.assert_close(crop(features), naive(features), atol=1e-4, rtol=1e-4)

    rows = [
        ("crop_and_resize 32x32", crop),
        ("  reference: naive per-box copy", naive),
        ("roi_align 14x14, ratio 2", align),
        ("roi_align 14x14, adaptive", align_adaptive),
    ]
    print(f"{args.boxes} boxes on (2, 256, 128, 128), float32, {torch.get_num_threads()} threads")
    print(f"{'op':34s} {'fwd ms':>9s} {'fwd+bwd ms':>11s}")
    results = {}
    for name, op in rows:
        with torch.no_grad():
            fwd = time_ms(lambda op=op: op(features), repeats=args.repeats)
        fb = time_ms(forward_backward(op), repeats=args.repeats)
        results[name] = (fwd, fb)
        print(f"{name:34s} {fwd:9.2f} {fb:11.2f}")
    ours, ref = results["crop_and_resize 32x32"], results["  reference: naive per-box copy"]
    print(
        f"crop_and_resize speed-up over the naive reference: fwd x{ref[0] / ours[0]:.1f}, "
        f"fwd+bwd x{ref[1] / ours[1]:.1f}"
    )

    probs = torch.rand(100, 32, 32, generator=gen)
    xy = torch.rand(100, 2, generator=gen) * 400
    paste_boxes = torch.cat([xy, xy + 8 + torch.rand(100, 2, generator=gen) * 200], dim=1)
    ms_paste = time_ms(
        lambda: paste_masks_in_image(probs, paste_boxes, (480, 640)), repeats=args.repeats
    )
    print(f"{'paste_masks_in_image 100 -> 480x640':34s} {ms_paste:9.2f}")


if __name__ == "__main__":
    main()
