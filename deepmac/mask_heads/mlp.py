"""Fully connected (MLP) mask head of Deep-MAC (TF ``FullyConnectedMaskHead``; paper App. A.2.2).

``conv1x1(C_in -> nc, with bias, no activation)`` -> flatten (``S * S * nc`` = 65,536 at
nc = 64, S = 32) -> ``Dense(1024) + ReLU`` -> ``Dense(S * S)`` -> ``(N, 1, S, S)``. Its output
already has one channel, so Deep-MAC skips ``project_out`` (§2.3). The official constructor forgets
``mask_size`` (§2.6); here it is required.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.mask_heads.layers import MaskHead, glorot_uniform_

__all__ = ["FullyConnectedMaskHead"]


class FullyConnectedMaskHead(MaskHead):
    """Two-layer MLP mask head with a full receptive field.

    Args:
        in_channels: ``C_in`` of the ``(N, C_in, S, S)`` crops.
        num_init_channels: ``nc``, channels of the 1x1 reduction conv.
        mask_size: ``S``; the dense layers only accept ``S x S`` crops and emit ``S x S`` logits.
        hidden_units: width of the hidden dense layer (1024 in TF).

    Forward: ``(N, C_in, S, S) -> (N, 1, S, S)`` logits.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_init_channels: int = 64,
        mask_size: int = 32,
        hidden_units: int = 1024,
    ) -> None:
        super().__init__()
        if mask_size < 1:
            raise ValueError(f"fully_connected needs mask_size >= 1, got {mask_size}")
        self.in_channels = in_channels
        self.fixed_size = mask_size
        self.input_layer = glorot_uniform_(nn.Conv2d(in_channels, num_init_channels, 1))
        self.fc1 = glorot_uniform_(
            nn.Linear(mask_size * mask_size * num_init_channels, hidden_units)
        )
        self.fc2 = glorot_uniform_(nn.Linear(hidden_units, mask_size * mask_size))

    def forward(self, features: Tensor) -> Tensor:
        """``(N, C_in, S, S) -> (N, 1, S, S)`` mask logits."""
        self.check_input(features)
        num, size = features.shape[0], self.fixed_size
        x = self.input_layer(features)
        # TF flattens NHWC, so fc1's rows are in (y, x, c) order; keep it for weight parity.
        x = x.permute(0, 2, 3, 1).flatten(1)  # (N, S * S * nc)
        x = self.fc2(F.relu(self.fc1(x), inplace=True))
        return x.view(num, 1, size, size)  # (N, 1, S, S)
