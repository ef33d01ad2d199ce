"""The box-prompted model (the paper's detection-free mode, Sec. 6): ``model`` (the network:
backbone, embedding heads, ``MaskBranch``) and ``criterion`` (its training loss)."""

from deepmac.models.box_prompted.criterion import BoxPromptedCriterion
from deepmac.models.box_prompted.model import (
    BoxPromptedDeepMAC,
    BoxPromptedOutputs,
    prediction_net,
)

__all__ = ["BoxPromptedCriterion", "BoxPromptedDeepMAC", "BoxPromptedOutputs", "prediction_net"]
