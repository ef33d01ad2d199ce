"""What the crop ops share: input validation (expected vs found in every error) and the
per-image bilinear sampling of box grids."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from deepmac.structures.boxes import check_boxes


def check_features(features: Tensor, name: str = "features") -> Tensor:
    """``features`` must be a floating ``(B, C, h, w)`` tensor."""
    if not isinstance(features, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (B, C, h, w), got {type(features).__name__}"
        )
    if features.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, h, w), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {features.dtype}")
    return features


def check_boxes_and_index(boxes: Tensor, batch_index: Tensor | None, num_images: int) -> Tensor:
    """Validate ``(N, 4)`` boxes and their ``(N,)`` image index; return the index (int64).

    ``batch_index=None`` is allowed only for a single image and means "all boxes on image 0".
    """
    check_boxes(boxes)
    num_boxes = boxes.shape[0]
    if batch_index is None:
        if num_images != 1:
            raise ValueError(f"batch_index (N,) is required when features hold {num_images} images")
        return torch.zeros(num_boxes, dtype=torch.long, device=boxes.device)
    if not isinstance(batch_index, Tensor) or batch_index.shape != (num_boxes,):
        found = tuple(batch_index.shape) if isinstance(batch_index, Tensor) else type(batch_index)
        raise ValueError(f"batch_index must be a tensor of shape ({num_boxes},), got {found}")
    if batch_index.is_floating_point() or batch_index.dtype == torch.bool:
        raise TypeError(f"batch_index must be an integer tensor, got dtype {batch_index.dtype}")
    # A value check needs the data: skipped while torch.export traces (ONNX export), where the
    # index is symbolic; the export wrappers build it themselves.
    if (
        not torch.compiler.is_compiling()
        and num_boxes
        and (int(batch_index.min()) < 0 or int(batch_index.max()) >= num_images)
    ):
        raise ValueError(
            f"batch_index values must be in [0, {num_images - 1}], "
            f"got range [{int(batch_index.min())}, {int(batch_index.max())}]"
        )
    return batch_index.long()


def output_hw(output_size: int | tuple[int, int]) -> tuple[int, int]:
    """``S`` or ``(S_h, S_w)`` to a validated ``(S_h, S_w)`` pair of positive ints."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or any((not isinstance(s, int)) or s < 1 for s in size):
        raise ValueError(
            f"output_size must be a positive int or a pair of them, got {output_size!r}"
        )
    return size  # type: ignore[return-value]


def pixel_to_grid(coords: Tensor, size: int) -> Tensor:
    """Pixel coordinates (pixel ``i`` centred at ``i``) to ``grid_sample`` coordinates.

    Uses the ``align_corners=False`` mapping so that a size-1 axis needs no special case.
    """
    return (2.0 * coords + 1.0) / size - 1.0


def sampling_layout(features: Tensor) -> Tensor:
    """The layout ``grid_sample`` reads fastest on CPU: channels_last for multi-channel maps.

    Measured on 2 CPU cores (benchmarks/ops.py): about 4x faster for a 256-channel map, because
    each bilinear tap then reads C contiguous values instead of C strided ones.
    """
    if features.shape[1] > 1 and features.device.type == "cpu":
        return features.contiguous(memory_format=torch.channels_last)
    return features


def sample_box_grids(
    features: Tensor, grid: Tensor, batch_index: Tensor, padding_mode: str
) -> Tensor:
    """Bilinear samples of ``features`` at per-box grids, ``(N, C, P, Q)``.

    Args:
        features: ``(B, C, h, w)``.
        grid: ``(N, P, Q, 2)`` ``grid_sample`` coordinates (x, y; ``align_corners=False``).
        batch_index: ``(N,)`` int64 image of each box.
        padding_mode: ``"zeros"`` (TF crop) or ``"border"`` (RoIAlign clamping).
    """
    num, num_p, num_q = grid.shape[:3]
    channels = features.shape[1]
    sample = lambda f, g: F.grid_sample(  # noqa: E731
        f, g, mode="bilinear", padding_mode=padding_mode, align_corners=False
    )
    if features.shape[0] == 1:
        # One image (inference): every box reads it, so a single call with the boxes stacked
        # along the grid height. No data-dependent step, so this path also exports to ONNX.
        values = sample(sampling_layout(features), grid.reshape(1, num * num_p, num_q, 2))
        return values.reshape(channels, num, num_p, num_q).transpose(0, 1).to(features.dtype)
    if features.shape[0] == num and torch.equal(
        batch_index, torch.arange(num, device=batch_index.device)
    ):
        # One box per image (e.g. GT-mask targets): a single batched call.
        return sample(features, grid)
    out = features.new_zeros(num, channels, num_p, num_q)
    for image in batch_index.unique().tolist():
        (idx,) = torch.nonzero(batch_index == image, as_tuple=True)
        # The boxes of one image stacked along the grid height: one grid_sample call per image,
        # without copying the feature map once per box.
        image_grid = grid[idx].reshape(1, idx.numel() * num_p, num_q, 2)
        values = sample(sampling_layout(features[image : image + 1]), image_grid)  # (1, C, n*P, Q)
        # Under autocast grid_sample computes in float32: cast back to the buffer's dtype.
        out[idx] = values.reshape(channels, idx.numel(), num_p, num_q).transpose(0, 1).to(out.dtype)
    return out
