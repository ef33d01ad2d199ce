"""Deep-MAC: CenterNet + the crop-then-segment mask branch (paper Sec. 3-4).

The box-prompted model plus, per backbone stack, CenterNet heads for the class heatmap, box size
and centre offset. Training crops the mask branch at the ground-truth boxes only (boxes of every
class, picked by the model's ``InstanceSampler``; the mask loss applies where ``has_mask``);
inference decodes the last stack's top-100 detections and crops at those. The losses are
``DeepMACCriterion``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepmac.models.box_prompted.model import BoxPromptedDeepMAC, prediction_net
from deepmac.models.centernet.decode import Detections, decode_detections
from deepmac.models.instances import InstanceSampler, SampledInstances
from deepmac.models.mask_branch import MaskBranch

#: Official ``heatmap_bias_init``: sigmoid(-2.19) = 0.1, so early training is not swamped by the
#: many background pixels of the focal loss.
HEATMAP_BIAS_INIT = -2.19


@dataclass
class DeepMACOutputs:
    """Per stack used: ``center_heatmap`` ``(B, K, h, w)`` logits, ``box_size`` and
    ``center_offset`` ``(B, 2, h, w)``, ``mask_logits`` ``(N, 1, S, S)`` at the boxes the branch
    was given. In eval mode, ``detections`` (one per image, input-pixel boxes) are the boxes the
    masks belong to, in order; in training, ``instances`` are the ground-truth boxes the sampler
    picked from the targets."""

    center_heatmap: list[Tensor]
    box_size: list[Tensor]
    center_offset: list[Tensor]
    mask_logits: list[Tensor]
    detections: list[Detections] | None = None
    instances: SampledInstances | None = None


class DeepMAC(BoxPromptedDeepMAC):
    """Deep-MAC. Arguments as ``BoxPromptedDeepMAC``, plus:

    Args:
        num_classes: ``K`` heatmap channels (contiguous class ids).
        max_detections: detections decoded per image at inference (official: 100).
    """

    model_type = "deepmac"

    def __init__(
        self,
        backbone: nn.Module,
        mask_branch: MaskBranch,
        *,
        num_classes: int,
        embedding_head_channels: int = 256,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        max_detections: int = 100,
        instance_sampler: InstanceSampler | None = None,
    ) -> None:
        super().__init__(
            backbone,
            mask_branch,
            embedding_head_channels=embedding_head_channels,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            instance_sampler=instance_sampler,
        )
        self.num_classes = num_classes
        self.max_detections = max_detections
        channels, stacks = backbone.out_channels, range(backbone.num_outputs)
        self.heatmap_heads = nn.ModuleList(
            prediction_net(channels, embedding_head_channels, num_classes) for _ in stacks
        )
        for head in self.heatmap_heads:
            nn.init.constant_(head[-1].bias, HEATMAP_BIAS_INIT)
        self.size_heads = nn.ModuleList(
            prediction_net(channels, embedding_head_channels, 2) for _ in stacks
        )
        self.offset_heads = nn.ModuleList(
            prediction_net(channels, embedding_head_channels, 2) for _ in stacks
        )

    def forward(
        self,
        images: Tensor,
        boxes: Tensor | None = None,
        batch_index: Tensor | None = None,
        image_sizes: list[tuple[int, int]] | Tensor | None = None,
        *,
        targets: list[dict] | None = None,
    ) -> DeepMACOutputs:
        """Detection maps for every stack used, and mask logits.

        Args:
            images: ``(B, 3, H, W)`` float RGB 0..255, padded to ``size_multiple``.
            boxes: ``(N, 4)`` boxes (input pixels) to crop masks at; ``None`` in eval mode crops
                at the decoded detections.
            batch_index: ``(N,)`` image of each box.
            image_sizes: unpadded ``(H, W)`` of each image, to clip detections to (pairs, or a
                ``(B, 2)`` tensor).
            targets: training: per image ``boxes`` ``(n, 4)`` and ``has_mask`` ``(n,)``; the
                mask branch crops at the ground-truth boxes the sampler picks.
        """
        instances = None
        if targets is not None:
            instances = self.instance_sampler(targets)
            boxes, batch_index = instances.boxes, instances.batch_index
        elif self.training and boxes is None:
            raise ValueError("Deep-MAC trains its mask branch on ground-truth boxes: pass targets")
        image_size = tuple(images.shape[-2:])
        out = DeepMACOutputs([], [], [], [], instances=instances)
        for stack, features in self.stack_features(images):
            out.center_heatmap.append(self.heatmap_heads[stack](features))
            out.box_size.append(self.size_heads[stack](features))
            out.center_offset.append(self.offset_heads[stack](features))
            crop_boxes, crop_index = boxes, batch_index
            if boxes is None:
                out.detections = decode_detections(
                    out.center_heatmap[-1],
                    out.box_size[-1],
                    out.center_offset[-1],
                    stride=self.backbone.stride,
                    image_sizes=image_sizes,
                    k=self.max_detections,
                )
                crop_boxes = torch.cat([d.boxes for d in out.detections])
                crop_index = torch.cat(
                    [
                        torch.full((len(d.boxes),), b, dtype=torch.long, device=d.boxes.device)
                        for b, d in enumerate(out.detections)
                    ]
                )
            embeddings = self.stack_embeddings(stack, features, image_size, dense=False)
            out.mask_logits.append(self.mask_branch(embeddings, crop_boxes, crop_index))
        return out
