"""Parameter-free Deep-MAC heads: ``embedding_projection`` and ``cond_inst{D}`` ([DM]).

In TF these heads receive the pixel-embedding crop and the instance embedding separately. Our
heads keep the single-tensor contract ``(N, C_in, S, S) -> (N, 1, S, S)``, so the instance
embedding arrives *tiled* over the crop and concatenated after the pixel channels:

* ``embedding_projection``: ``C_in = 2 D`` = ``[pixel embedding (D) | instance embedding (D)]``;
  logit = per-pixel dot product (TF ``embedding_projection``). TF requires ``use_xy = False``
  and ``pixel_embedding_dim == dim``; here that is the "two equal halves" rule.
* ``cond_inst{D}``: ``C_in = P + K`` = ``[pixel features (P, may include the 2 coordinate
  channels) | dynamic parameters (K)]``; the K channels are one instance's CondInst weights
  (TF ``per_pixel_conditional_conv``), read at pixel (0, 0) because they are spatially constant.
  ``K`` depends on ``P``, the hidden width ``nc`` and the depth ``D``; ``P`` is solved from
  ``C_in`` and an ``in_channels`` with no integer solution is rejected at construction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from deepmac.mask_heads.layers import MaskHead

__all__ = ["CondInstHead", "EmbeddingProjectionHead", "cond_inst_num_params"]


class EmbeddingProjectionHead(MaskHead):
    """Per-pixel dot product of the pixel and instance halves of the input.

    Args:
        in_channels: ``2 D``; channels ``[0, D)`` are the pixel embedding and ``[D, 2D)`` the
            (tiled) instance embedding.

    Forward: ``(N, 2D, S, S) -> (N, 1, S, S)`` logits; no parameters.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 2 or in_channels % 2:
            raise ValueError(
                "embedding_projection needs in_channels = 2 * D (pixel-embedding half and "
                f"instance-embedding half of equal size D), got in_channels={in_channels}"
            )
        self.in_channels = in_channels

    def forward(self, features: Tensor) -> Tensor:
        """``(N, 2D, S, S) -> (N, 1, S, S)``: ``sum_c pixel[c] * instance[c]``."""
        self.check_input(features)
        pixel, instance = features.chunk(2, dim=1)  # (N, D, S, S) each
        return (pixel * instance).sum(dim=1, keepdim=True)


def cond_inst_num_params(input_channels: int, channels: int, depth: int) -> int:
    """Dynamic parameter count of ``per_pixel_conditional_conv`` (weights + biases).

    Layer 0 maps ``input_channels -> channels``, the middle ones ``channels -> channels`` and the
    last one ``-> 1``; with ``depth = 1`` TF requires ``input_channels == channels``.
    """
    if depth < 1:
        raise ValueError(f"cond_inst depth must be >= 1, got {depth}")
    input_convs = 1 if depth > 1 else 0
    weights = (
        input_channels * channels * input_convs + channels * channels * max(depth - 2, 0) + channels
    )
    return weights + channels * (depth - 1) + 1


def _solve_pixel_channels(in_channels: int, channels: int, depth: int) -> int:
    """``P`` with ``P + cond_inst_num_params(P, channels, depth) == in_channels``."""
    if depth == 1:
        pixel = channels
    else:
        # P + P*nc + nc^2 (D-2) + nc + nc (D-1) + 1 = C_in, linear in P.
        rest = in_channels - (channels * channels * (depth - 2) + channels * depth + 1)
        pixel = rest // (channels + 1) if rest > 0 else 0
    if pixel < 1 or pixel + cond_inst_num_params(pixel, channels, depth) != in_channels:
        valid = [p + cond_inst_num_params(p, channels, depth) for p in range(1, 4)]
        hint = (
            f"in_channels = {2 * channels + 1} ({channels} pixel channels + {channels} "
            f"weights + 1 bias)"
            if depth == 1
            else f"in_channels = P + P*{channels} + {channels * channels * (depth - 2)} + "
            f"{channels * depth + 1} for P pixel channels (e.g. {valid} for P = 1, 2, 3)"
        )
        raise ValueError(
            f"cond_inst{depth} with nc={channels} cannot split in_channels="
            f"{in_channels} into pixel features and dynamic parameters: need {hint}"
        )
    return pixel


class CondInstHead(MaskHead):
    """CondInst-style dynamic 1x1 conv head (TF ``per_pixel_conditional_conv``).

    Args:
        in_channels: ``P + K``: ``P`` pixel-feature channels then ``K`` tiled parameter channels.
        depth: number of dynamic 1x1 conv layers ``D`` (ReLU between them).
        channels: hidden width ``nc`` (TF passes ``num_init_channels``).

    Parameter layout per layer (TF order): ``in * out`` weights reshaped ``(in, out)`` row-major,
    then ``out`` biases; layers follow each other.

    Forward: ``(N, P + K, S, S) -> (N, 1, S, S)`` logits; no parameters of its own.
    """

    def __init__(self, in_channels: int, *, depth: int, channels: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.depth = depth
        self.channels = channels
        self.pixel_channels = _solve_pixel_channels(in_channels, channels, depth)

    def forward(self, features: Tensor) -> Tensor:
        """``(N, P + K, S, S) -> (N, 1, S, S)`` mask logits."""
        self.check_input(features)
        num, _, height, width = features.shape
        out = features[:, : self.pixel_channels].flatten(2)  # (N, P, S*S)
        params = features[:, self.pixel_channels :, 0, 0]  # (N, K)
        start, in_ch = 0, self.pixel_channels
        for layer in range(self.depth):
            last = layer == self.depth - 1
            out_ch = 1 if last else self.channels
            weight = params[:, start : start + in_ch * out_ch].view(num, in_ch, out_ch)
            start += in_ch * out_ch
            bias = params[:, start : start + out_ch]  # (N, out)
            start += out_ch
            out = torch.baddbmm(bias.unsqueeze(2), weight.transpose(1, 2), out)  # (N, out, S*S)
            if not last:
                out = out.relu()
            in_ch = out_ch
        return out.view(num, 1, height, width)
