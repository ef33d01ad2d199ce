"""CenterNet ("Objects as Points") as the official TF OD API implements it: target assignment,
losses and decoding (reference digest §4). Pure tensor functions, tested against hand-worked
cases."""

from deepmac.models.centernet.decode import decode_detections
from deepmac.models.centernet.loss import centernet_losses, penalty_reduced_focal_loss
from deepmac.models.centernet.targets import (
    CenterNetTargets,
    encode_centernet_targets,
    gaussian_radius,
)

__all__ = [
    "CenterNetTargets",
    "centernet_losses",
    "decode_detections",
    "encode_centernet_targets",
    "gaussian_radius",
    "penalty_reduced_focal_loss",
]
