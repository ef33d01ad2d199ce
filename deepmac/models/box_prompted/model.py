"""Box-prompted Deep-MAC: boxes in, masks out (the paper's detection-free mode, Sec. 6).

A backbone gives stride-4 features; per backbone output (one per hourglass stack) two small
prediction nets give the pixel embedding (16 ch) and the instance embedding (32 ch); the shared
``MaskBranch`` turns them into box-relative mask logits. Training uses the ground-truth boxes
(``forward(images, targets=...)``, picked by the model's ``InstanceSampler``), inference the
user's boxes. No detector is involved. The losses are ``BoxPromptedCriterion``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deepmac.models.instances import InstanceSampler, SampledInstances
from deepmac.models.mask_branch import EmbeddingFeatures, MaskBranch, box_centre_pixels
from deepmac.models.pixel_normalization import PixelNormalization


def prediction_net(in_channels: int, hidden_channels: int, out_channels: int) -> nn.Sequential:
    """The official CenterNet ``make_prediction_net`` of 2021: 3x3 conv, ReLU, 1x1 conv, no BN,
    Keras default init (glorot-uniform kernels, zero biases)."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden_channels, out_channels, 1),
    )
    for layer in (net[0], net[2]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return net


@dataclass
class BoxPromptedOutputs:
    """``mask_logits``: one ``(N, 1, S, S)`` tensor per backbone output used (all in training,
    the last one in eval mode, as the official model). ``instances``: the ground-truth boxes
    they are at, when the model picked them from training targets."""

    mask_logits: list[Tensor]
    instances: SampledInstances | None = None


class BoxPromptedDeepMAC(PixelNormalization, nn.Module):
    """Backbone + embedding heads + mask branch.

    Args:
        backbone: a ``deepmac.backbones.Backbone`` (list of stride-4 maps).
        mask_branch: the crop-then-segment branch.
        embedding_head_channels: hidden width of the embedding prediction nets (256).
        pixel_mean, pixel_std: per-channel statistics on 0..255 RGB input.
        instance_sampler: which ground-truth boxes of the training targets the mask branch
            trains on (``data.max_instances``, ``train.mask_head_instances``).
    """

    model_type = "box_prompted"

    def __init__(
        self,
        backbone: nn.Module,
        mask_branch: MaskBranch,
        *,
        embedding_head_channels: int = 256,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        instance_sampler: InstanceSampler | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_branch = mask_branch
        self.instance_sampler = instance_sampler or InstanceSampler()
        channels = backbone.out_channels
        # One pair of embedding heads per backbone output, no weight sharing between stacks
        # (official ``_construct_prediction_heads``); one mask branch for all stacks.
        self.pixel_heads = nn.ModuleList(
            prediction_net(channels, embedding_head_channels, mask_branch.pixel_embedding_dim)
            for _ in range(backbone.num_outputs)
        )
        self.instance_heads = nn.ModuleList(
            prediction_net(channels, embedding_head_channels, mask_branch.instance_embedding_dim)
            if mask_branch.use_instance_embedding
            else nn.Identity()
            for _ in range(backbone.num_outputs)
        )
        self.register_pixel_statistics(pixel_mean, pixel_std)

    @property
    def size_multiple(self) -> int:
        return getattr(self.backbone, "size_multiple", 32)

    def stack_features(self, images: Tensor) -> list[tuple[int, Tensor]]:
        """``(stack index, (B, C, h, w) features)`` for every backbone output in training and
        for the last one in eval mode (the official model trains all stacks, infers with the
        last)."""
        images = self.normalize(images)
        if self.training and images.device.type == "cpu":
            # oneDNN runs this backbone's convolutions (forward and backward) faster on
            # channels_last tensors; the layout then propagates through the network.
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        stacks = range(len(features)) if self.training else [len(features) - 1]
        return [(s, features[s]) for s in stacks]

    def instance_embedding_at_boxes(
        self,
        stack: int,
        features: Tensor,
        boxes: Tensor,
        batch_index: Tensor | None,
        image_size: tuple[float, float],
    ) -> Tensor | None:
        """``(N, Ci)`` instance embedding at each box centre's pixel, or None without one.

        Equal to ``sample_at_box_centres(embed(stack, features)[1], ...)``, but the instance
        prediction net (3x3 conv, ReLU, 1x1 conv) runs only on the 3x3 feature patch around
        each of the N centre pixels instead of on the whole map, of which the mask branch
        reads N pixels: in training on 384 px that is a quarter of the backbone's cost saved.
        """
        if not self.mask_branch.use_instance_embedding:
            return None
        conv3, activation, conv1 = self.instance_heads[stack]
        if batch_index is None:
            batch_index = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        rows, cols = box_centre_pixels(boxes, tuple(features.shape[-2:]), image_size)
        pad = conv3.padding[0]
        taps = torch.arange(conv3.kernel_size[0], device=boxes.device)
        rows, cols = rows[:, None] + taps, cols[:, None] + taps  # (N, k) in the padded map
        padded = F.pad(features, (pad, pad, pad, pad))
        # Advanced indices around a slice put their dims first: (N, k, k, C) -> (N, C, k, k).
        patches = padded[batch_index[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        hidden = activation(F.conv2d(patches.permute(0, 3, 1, 2), conv3.weight, conv3.bias))
        return conv1(hidden).flatten(1)  # (N, Ci)

    def stack_embeddings(
        self, stack: int, features: Tensor, image_size: tuple[int, int], *, dense: bool
    ) -> EmbeddingFeatures:
        """The ``EmbeddingFeatures`` of one stack's ``(B, C, h, w)`` features.

        ``dense`` computes the instance embedding map once, in float32, and reads it at each
        box (what several rounds of prompts on one image want: the maps are cached, also
        under autocast); otherwise the instance head runs at the box centres only
        (``instance_embedding_at_boxes``: training, one set of boxes).
        """
        pixel = self.pixel_heads[stack](features)
        if dense:
            pixel = pixel.float()
        if not self.mask_branch.use_instance_embedding:
            return EmbeddingFeatures(pixel, None, image_size)
        if dense:
            instance = self.instance_heads[stack](features).float()
            return EmbeddingFeatures.from_maps(pixel, instance, image_size)

        def at_boxes(boxes: Tensor, batch_index: Tensor | None) -> Tensor:
            return self.instance_embedding_at_boxes(stack, features, boxes, batch_index, image_size)

        return EmbeddingFeatures(pixel, at_boxes, image_size)

    def prompt_features(self, images: Tensor) -> EmbeddingFeatures:
        """What ``mask_branch`` reads for boxes on ``(B, 3, H, W)`` images: the last stack's
        embeddings, the instance map computed once (the mask-branch contract,
        ``deepmac.models.mask_branch``)."""
        stack, features = self.stack_features(images)[-1]
        return self.stack_embeddings(stack, features, tuple(images.shape[-2:]), dense=True)

    def forward(
        self,
        images: Tensor,
        boxes: Tensor | None = None,
        batch_index: Tensor | None = None,
        *,
        targets: list[dict] | None = None,
    ) -> BoxPromptedOutputs:
        """Mask logits for boxes, or for the ground-truth boxes the sampler picks of
        ``targets``.

        Args:
            images: ``(B, 3, H, W)`` float RGB in 0..255, padded (H, W multiples of
                ``size_multiple``).
            boxes: ``(N, 4)`` float xyxy in pixels of ``images``.
            batch_index: ``(N,)`` int64 image of each box (None when B == 1).
            targets: training targets instead of boxes: per image ``boxes`` ``(n, 4)`` and
                ``has_mask`` ``(n,)``.

        Returns:
            ``BoxPromptedOutputs`` with ``(N, 1, S, S)`` logits per stack used.
        """
        instances = None
        if targets is not None:
            instances = self.instance_sampler(targets)
            boxes, batch_index = instances.boxes, instances.batch_index
        elif boxes is None:
            raise ValueError("pass boxes to segment, or training targets")
        image_size = tuple(images.shape[-2:])
        logits = [
            self.mask_branch(
                self.stack_embeddings(stack, features, image_size, dense=False), boxes, batch_index
            )
            for stack, features in self.stack_features(images)
        ]
        return BoxPromptedOutputs(mask_logits=logits, instances=instances)
