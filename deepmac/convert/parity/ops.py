"""The crop op and the upsampling conventions the converted models rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deepmac.convert.parity.environment import prepare_tensorflow
from deepmac.convert.parity.report import CROP_BOUND, ParityRow, compare
from deepmac.convert.parity.tf_weights import nchw


def check_crop_and_resize(
    *, models_dir: str | Path | None = None, num_boxes: int = 64, seed: int = 0
) -> list[ParityRow]:
    """Our ``crop_and_resize`` vs the OD API's ``matmul_crop_and_resize`` (what Deep-MAC calls)
    and vs ``tf.image.crop_and_resize``, on random boxes of which many stick out of the map.

    ``tf.image.crop_and_resize`` zeroes a whole sample that lies outside ``[0, h - 1]``; the
    matmul op (and ours) still interpolates its in-range neighbour. The two therefore differ on
    samples within one pixel outside the map; that difference is reported without a bound.
    """
    import tensorflow as tf

    prepare_tensorflow(models_dir)
    from object_detection.utils import spatial_transform_ops

    from deepmac.ops import crop_and_resize

    rng = np.random.default_rng(seed)
    batch, h, w, channels, out_h, out_w = 2, 17, 23, 5, 7, 9  # odd, non-square: axis mix-ups show
    image = rng.normal(size=(batch, h, w, channels)).astype(np.float32)
    lo = rng.uniform(-0.3, 0.8, size=(batch, num_boxes, 2))
    size = rng.uniform(0.05, 0.6, size=(batch, num_boxes, 2))
    # (y1, x1, y2, x2) normalised; about half of them stick out of the map.
    boxes = np.concatenate([lo, lo + size], axis=-1).astype(np.float32)
    matmul = spatial_transform_ops.matmul_crop_and_resize(
        tf.constant(image), tf.constant(boxes), [out_h, out_w]
    ).numpy()  # (B, N, oh, ow, C)
    native = (
        tf.image.crop_and_resize(
            image, boxes.reshape(-1, 4), np.repeat(np.arange(batch), num_boxes), [out_h, out_w]
        )
        .numpy()
        .reshape(batch, num_boxes, out_h, out_w, channels)
    )

    # Ours takes xyxy boxes in the frame ``image_size``; a unit frame passes the normalised
    # values through unchanged (Deep-MAC's pixel boxes divide exactly: both sides are stride 4
    # multiples of the output map).
    xyxy = boxes[..., [1, 0, 3, 2]]
    ours = (
        crop_and_resize(
            nchw(image),
            torch.from_numpy(xyxy.reshape(-1, 4)),
            (out_h, out_w),
            torch.arange(batch).repeat_interleave(num_boxes),
            image_size=(1.0, 1.0),
        )
        .numpy()
        .reshape(batch, num_boxes, channels, out_h, out_w)
        .transpose(0, 1, 3, 4, 2)
    )

    # Samples within one pixel outside the map, where the two TF ops disagree by design.
    ys = boxes[..., 0:1] + (boxes[..., 2:3] - boxes[..., 0:1]) * np.linspace(0, 1, out_h)
    xs = boxes[..., 1:2] + (boxes[..., 3:4] - boxes[..., 1:2]) * np.linspace(0, 1, out_w)
    ys, xs = ys * (h - 1), xs * (w - 1)
    fringe_y = ((ys > -1) & (ys < 0)) | ((ys > h - 1) & (ys < h))
    fringe_x = ((xs > -1) & (xs < 0)) | ((xs > w - 1) & (xs < w))
    fringe = (fringe_y[..., :, None] | fringe_x[..., None, :])[..., None]  # (B, N, oh, ow, 1)
    outside = (boxes[..., :2] < 0).any(-1) | (boxes[..., 2:] > 1).any(-1)
    inside = ~outside
    keep = np.broadcast_to(~fringe, native.shape)
    note = f"{num_boxes * batch} boxes, {int(outside.sum())} partly outside"
    return [
        compare(
            "crop_and_resize vs OD API matmul_crop_and_resize (the op Deep-MAC calls)",
            ours,
            matmul,
            CROP_BOUND,
            note,
        ),
        # tf.image.crop_and_resize computes its sample positions with other float32 arithmetic;
        # the first row shows how far TF's two ops are from each other, as the scale of the next.
        compare(
            "tf.image.crop_and_resize vs matmul_crop_and_resize (TF against TF), boxes inside",
            native[inside],
            matmul[inside],
            None,
            f"{int(inside.sum())} boxes",
        ),
        compare(
            "crop_and_resize vs tf.image.crop_and_resize, boxes inside",
            ours[inside],
            native[inside],
            None,
            f"{int(inside.sum())} boxes; same spread as TF vs TF",
        ),
        compare(
            "crop_and_resize vs tf.image.crop_and_resize, all samples but the 1-px fringe",
            ours[keep],
            native[keep],
            None,
            note,
        ),
        compare(
            "crop_and_resize vs tf.image.crop_and_resize, fringe samples (by design)",
            ours[~keep],
            native[~keep],
            None,
            "tf.image zeroes a sample outside [0, h-1]; Deep-MAC's matmul op does not",
        ),
    ]


def check_conventions(*, seed: int = 0) -> list[ParityRow]:
    """Upsampling conventions the converted models rely on (``layouts`` module docstring)."""
    import tensorflow as tf
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 13, 11, 3)).astype(np.float32)
    nearest = tf.keras.layers.UpSampling2D(2)(x).numpy()
    bilinear = tf.image.resize(x, [32, 27], method="bilinear").numpy()
    ours_nearest = F.interpolate(nchw(x), scale_factor=2, mode="nearest")
    ours_bilinear = F.interpolate(nchw(x), size=(32, 27), mode="bilinear", align_corners=False)
    to_nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    return [
        compare(
            "UpSampling2D(2) vs F.interpolate(nearest)", to_nhwc(ours_nearest), nearest, CROP_BOUND
        ),
        compare(
            "tf.image.resize(bilinear) vs F.interpolate(bilinear, align_corners=False)",
            to_nhwc(ours_bilinear),
            bilinear,
            CROP_BOUND,
        ),
    ]
