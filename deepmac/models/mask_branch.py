"""Crop-then-segment, the one mechanism by which every deepmac model produces masks.

The contract every family's mask branch keeps (box-prompted, Deep-MAC: ``MaskBranch``;
Deep-MARC: ``deepmac.models.deepmarc.mask_head.RoIMaskBranch``)::

    features = model.prompt_features(images)                  # once per image batch
    mask_logits = model.mask_branch(features, boxes, batch_index)   # (N, 1, S_out, S_out)
    masks = model.mask_branch.paste(probs, boxes_in_image, image_size, threshold)

with ``crop_size`` (side of the crop the head reads), ``output_size`` (side of its logits),
``paste`` (the convention that puts box-relative masks back into an image) and
``mask_targets`` (the same convention the other way: ground-truth masks cropped at boxes).
Only the boxes differ between modes: ground truth when training, detections or user boxes at
inference.

``MaskBranch``, for each box: crop the pixel embedding at the box to ``S x S`` (TF
``crop_and_resize``), put the 2-channel box-relative coordinate grid in front of it, append the
instance embedding read at the box centre and tiled, and run a class-agnostic mask head from
``MASK_HEADS``. Channel order and sampling follow the official ``deepmac_meta_arch`` (reference
digest §1.4-1.8): ``(y, x, pixel_emb[0:Cp], inst_emb[0:Ci])``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from deepmac.mask_heads import build_mask_head
from deepmac.ops import crop_and_resize
from deepmac.structures.masks import crop_mask_targets, paste_masks_in_image


def coordinate_embedding(mask_size: int, *, dtype=torch.float32, device=None) -> Tensor:
    """``(2, S, S)`` box-relative coordinates: channel 0 is y, channel 1 is x, both
    ``linspace(-1, 1, S)`` with the end points included (row 0 is -1, row S-1 is +1)."""
    line = torch.linspace(-1.0, 1.0, mask_size, dtype=dtype, device=device)
    grid_y, grid_x = torch.meshgrid(line, line, indexing="ij")
    return torch.stack([grid_y, grid_x])


def box_centre_pixels(
    boxes: Tensor, map_size: tuple[int, int], image_size: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Row and column ``(N,)`` int64 of the map pixel holding each box centre.

    The official code computes ``floor(centre / image_size * h)``: the centre is scaled by the
    map size ``h``, not ``h - 1`` as in the crop, and truncated. That is the pixel where the
    CenterNet heatmap peak of the box lies. We clamp to the map, where the official code would
    index out of range for a centre exactly on the far border.

    Args:
        boxes: ``(N, 4)`` xyxy in pixels of the ``image_size`` frame.
        map_size: ``(h, w)`` of the map.
        image_size: ``(H_img, W_img)`` the map covers.
    """
    h, w = map_size
    img_h, img_w = image_size
    centre_y = (boxes[:, 1] + boxes[:, 3]) * 0.5 / img_h * h
    centre_x = (boxes[:, 0] + boxes[:, 2]) * 0.5 / img_w * w
    rows = centre_y.floor().long().clamp(0, h - 1)
    cols = centre_x.floor().long().clamp(0, w - 1)
    return rows, cols


def sample_at_box_centres(
    embedding: Tensor, boxes: Tensor, batch_index: Tensor, image_size: tuple[float, float]
) -> Tensor:
    """Read ``embedding`` at the pixel holding each box centre (nearest, no interpolation;
    see ``box_centre_pixels``).

    Args:
        embedding: ``(B, C, h, w)``.
        boxes: ``(N, 4)`` xyxy in pixels of the ``image_size`` frame.
        batch_index: ``(N,)`` int64.
        image_size: ``(H_img, W_img)`` the map covers.

    Returns:
        ``(N, C)``.
    """
    rows, cols = box_centre_pixels(boxes, tuple(embedding.shape[-2:]), image_size)
    return embedding[batch_index, :, rows, cols]  # (N, C)


@dataclass
class EmbeddingFeatures:
    """What ``MaskBranch`` reads of one batch of images.

    Attributes:
        pixel: ``(B, Cp, h, w)`` pixel embedding map.
        instance_at_boxes: ``(boxes (N, 4), batch_index (N,) | None) -> (N, Ci)`` instance
            embedding at each box centre, or None without instance embedding.
        image_size: ``(H, W)`` of the padded input the maps cover.
    """

    pixel: Tensor
    instance_at_boxes: Callable[[Tensor, Tensor | None], Tensor] | None
    image_size: tuple[int, int]

    @classmethod
    def from_maps(
        cls, pixel: Tensor, instance: Tensor | None, image_size: tuple[int, int]
    ) -> EmbeddingFeatures:
        """Features of a pixel map and a ``(B, Ci, h, w)`` instance map (or None), the instance
        embedding read at each box centre (``sample_at_box_centres``)."""
        if instance is None:
            return cls(pixel, None, image_size)

        def at_boxes(boxes: Tensor, batch_index: Tensor | None) -> Tensor:
            if batch_index is None:
                batch_index = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
            return sample_at_box_centres(instance, boxes, batch_index, image_size)

        return cls(pixel, at_boxes, image_size)


def _mask_targets(gt_masks: Tensor, boxes: Tensor, gt_index: Tensor, size: int) -> Tensor:
    """``(N, S, S)`` soft targets: mask ``gt_index[n]`` of ``(G, H, W)`` cropped at box ``n``
    (TF ``crop_and_resize``, the convention ``MaskBranch`` crops features with)."""
    return crop_mask_targets(gt_masks[gt_index], boxes, size)


class MaskBranch(nn.Module):
    """Mask logits ``(N, 1, S, S)`` for boxes, from pixel and instance embedding maps.

    Args:
        head: a registry name from ``deepmac.mask_heads.MASK_HEADS`` (e.g. ``"hourglass52"``).
        pixel_embedding_dim: channels of the pixel embedding map (paper: 16).
        instance_embedding_dim: channels of the instance embedding map (paper: 32).
        mask_size: crop side ``S`` (paper: 32).
        num_init_channels: width of the head (official ``num_init_channels``, 64).
        use_xy: prepend the coordinate embedding (official ``use_xy``).
        use_instance_embedding: append the instance embedding (official
            ``use_instance_embedding``).

    Attributes:
        crop_size, output_size: ``S`` (the head keeps the crop's size).
        paste: box-relative masks into an image (``paste_masks_in_image``, TF convention);
            ``paste_convention`` names it (``structures.masks.PASTE_CONVENTIONS``).
        mask_targets: ground-truth masks cropped at boxes, in that convention.
    """

    paste_convention = "crop_and_resize"
    paste = staticmethod(paste_masks_in_image)
    mask_targets = staticmethod(_mask_targets)

    def __init__(
        self,
        head: str,
        *,
        pixel_embedding_dim: int = 16,
        instance_embedding_dim: int = 32,
        mask_size: int = 32,
        num_init_channels: int = 64,
        use_xy: bool = True,
        use_instance_embedding: bool = True,
    ) -> None:
        super().__init__()
        self.head_name = head
        self.pixel_embedding_dim = pixel_embedding_dim
        self.instance_embedding_dim = instance_embedding_dim if use_instance_embedding else 0
        self.crop_size = self.output_size = mask_size
        self.use_xy = use_xy
        self.use_instance_embedding = use_instance_embedding
        self.in_channels = 2 * use_xy + pixel_embedding_dim + self.instance_embedding_dim
        self.head = build_mask_head(
            head, self.in_channels, num_init_channels=num_init_channels, mask_size=mask_size
        )
        self.register_buffer("coords", coordinate_embedding(mask_size), persistent=False)

    def head_inputs(
        self, features: EmbeddingFeatures, boxes: Tensor, batch_index: Tensor | None
    ) -> Tensor:
        """The ``(N, C_in, S, S)`` mask-head input; see ``forward`` for the arguments. Boxes
        and index are checked by ``crop_and_resize``, once."""
        pixel = features.pixel
        if pixel.dim() != 4:
            raise ValueError(f"pixel_embedding must be (B, C, h, w), got {tuple(pixel.shape)}")
        if pixel.shape[1] != self.pixel_embedding_dim:
            raise ValueError(
                f"pixel_embedding must have {self.pixel_embedding_dim} channels, "
                f"got {pixel.shape[1]}"
            )
        crops = crop_and_resize(pixel, boxes, self.crop_size, batch_index, features.image_size)
        num, size = boxes.shape[0], self.crop_size
        parts = []
        if self.use_xy:
            parts.append(self.coords.to(pixel.dtype).expand(num, 2, size, size))
        parts.append(crops)
        if self.use_instance_embedding:
            centres = (
                None
                if features.instance_at_boxes is None
                else features.instance_at_boxes(boxes, batch_index)
            )
            if centres is None or centres.shape[1] != self.instance_embedding_dim:
                found = None if centres is None else centres.shape[1]
                raise ValueError(
                    f"instance_embedding must have {self.instance_embedding_dim} channels, "
                    f"got {found}"
                )
            parts.append(centres[:, :, None, None].expand(num, -1, size, size))
        return torch.cat(parts, dim=1)  # (N, C_in, S, S)

    def forward(
        self, features: EmbeddingFeatures, boxes: Tensor, batch_index: Tensor | None = None
    ) -> Tensor:
        """Mask logits for each box.

        Args:
            features: the embeddings of the batch (``BoxPromptedDeepMAC.prompt_features``).
            boxes: ``(N, 4)`` float xyxy in pixels of the (padded) input image.
            batch_index: ``(N,)`` int64 image of each box (None when B == 1).

        Returns:
            ``(N, 1, S, S)`` box-relative mask logits.
        """
        inputs = self.head_inputs(features, boxes, batch_index)
        num = inputs.shape[0]
        if self.training and inputs.device.type == "cpu":
            # oneDNN trains the head's convolutions about 6% faster on channels_last crops.
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if torch.compiler.is_exporting():
            # An exported graph takes any number of boxes: no Python branch on N (eval-mode
            # heads handle an empty batch themselves).
            return self.head(inputs)
        if num == 0:
            # No boxes: skip the head (BatchNorm cannot normalise an empty batch); keep the
            # result attached to the embeddings so that a loss on it back-propagates.
            return inputs.sum() * 0 + inputs.new_zeros(0, 1, self.output_size, self.output_size)
        if num == 1 and self.training:
            # A single crop gives BatchNorm one value per channel at the 1x1 bottleneck of the
            # deep hourglasses, where training-mode statistics are undefined. The official code
            # never meets this (it pads to 100 boxes); we run the crop twice and keep one.
            return self.head(inputs.expand(2, -1, -1, -1))[:1]
        return self.head(inputs)
