"""Data conventions of deepmac, stated once. Every module follows them.

Boxes
    ``xyxy`` float32 in absolute pixels of the *current* image frame (after resize/pad).
    COCO ``xywh`` appears only at the edges: reading annotations (``deepmac.data.coco``) and
    writing results (``deepmac.evaluation.coco``). Feature-map coordinates are
    ``image_coords / stride``.
Two crop conventions, each defined once:
    * Deep-MAC crops with TF ``crop_and_resize`` semantics (``deepmac.ops.crop_and_resize``):
      pixels are points, a box edge is a sample point, zeros outside the map.
    * Deep-MARC pools with RoIAlign ``aligned=True`` half-pixel semantics
      (``deepmac.ops.roi_align``), as detectron2 and Model Garden do.
Class ids
    Contiguous ``0..K-1`` inside the library; COCO ``category_id`` only at the dataset and
    evaluation edges (``CocoInstances.contiguous_to_category_id``). Seen/unseen splits are defined
    in ``deepmac.data.class_splits``.
Partial supervision
    Annotations are never dropped for lack of mask supervision. Each instance carries
    ``has_mask`` (bool): whether its class is in the mask-supervised split. The mask loss is
    weighted by it; detection losses see every class.
Masks
    ``gt_masks``: bool ``(N, H, W)`` in the image frame. Head output ``mask_logits``: float
    ``(N, 1, S, S)``, box-relative. After sigmoid ``mask_probs``; pasted into the image:
    ``masks`` bool ``(N, H, W)``.
Shapes
    ``B`` images, ``N`` instances over the batch, ``C`` channels, ``S`` crop side, ``H, W`` image
    size, ``h, w`` feature-map size. ``batch_index`` (N,) int64 names the image of each box.
"""

from deepmac.structures.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    check_boxes,
    clip_boxes,
)

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_xywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_xyxy_to_xywh",
    "check_boxes",
    "clip_boxes",
]
