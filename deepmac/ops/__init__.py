"""Detection ops in plain PyTorch (no torchvision): crops, RoIAlign, NMS, heatmap peaks."""

from deepmac.ops.crop_and_resize import crop_and_resize
from deepmac.ops.nms import batched_nms, heatmap_peaks, nms
from deepmac.ops.roi_align import assign_fpn_levels, multilevel_roi_align, roi_align

__all__ = [
    "assign_fpn_levels",
    "batched_nms",
    "crop_and_resize",
    "heatmap_peaks",
    "multilevel_roi_align",
    "nms",
    "roi_align",
]
