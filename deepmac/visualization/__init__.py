"""Drawing predictions and ground truth on images."""

from deepmac.visualization.draw import draw_instances

__all__ = ["draw_instances"]
