"""Deep-MAC (paper Sec. 3-4): ``model`` (CenterNet heads on the box-prompted network) and
``criterion`` (CenterNet and mask losses). The CenterNet parts are ``deepmac.models.centernet``."""

from deepmac.models.deepmac.criterion import DeepMACCriterion
from deepmac.models.deepmac.model import HEATMAP_BIAS_INIT, DeepMAC, DeepMACOutputs

__all__ = ["HEATMAP_BIAS_INIT", "DeepMAC", "DeepMACCriterion", "DeepMACOutputs"]
