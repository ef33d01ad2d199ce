"""Drawing predictions and ground truth on images."""

from deepmac.visualization.draw import draw_comparison, draw_instances, instance_color, mask_iou

__all__ = ["draw_comparison", "draw_instances", "instance_color", "mask_iou"]
