"""Deep-MARC (Deep Mask-heads Above R-CNN): Mask R-CNN with a class-agnostic deep mask head
trained on ground-truth boxes (paper Sec. 3, 5; reference/official-implementation.md §5).

One concept per module: ``anchors`` (anchor grid), ``box_coder`` (box deltas), ``matcher``
(IoU matcher + balanced sampler), ``rpn`` (proposals + RPN losses), ``roi_heads`` (Fast R-CNN
box branch + post-processing), ``mask_head`` (RoI mask branch, targets, paste-back), ``model``
(the assembled ``DeepMARC``), ``criterion`` (its training losses). The FPN backbone is
``deepmac.backbones.fpn``.
"""

from deepmac.models.deepmarc.anchors import AnchorGenerator
from deepmac.models.deepmarc.box_coder import ROI_BOX_WEIGHTS, RPN_BOX_WEIGHTS, BoxCoder
from deepmac.models.deepmarc.criterion import DeepMARCCriterion
from deepmac.models.deepmarc.mask_head import RoIMaskBranch, paste_roi_masks, roi_mask_targets
from deepmac.models.deepmarc.matcher import BalancedSampler, Matcher
from deepmac.models.deepmarc.model import (
    MASK_TRAIN_BOXES,
    DeepMARC,
    DeepMARCOutputs,
    check_mask_train_boxes,
)
from deepmac.models.deepmarc.roi_heads import RoIBoxHeads, SampledRoIs
from deepmac.models.deepmarc.rpn import Proposals, RegionProposalNetwork, RPNHead

__all__ = [
    "MASK_TRAIN_BOXES",
    "ROI_BOX_WEIGHTS",
    "RPN_BOX_WEIGHTS",
    "AnchorGenerator",
    "BalancedSampler",
    "BoxCoder",
    "DeepMARC",
    "DeepMARCCriterion",
    "DeepMARCOutputs",
    "Matcher",
    "Proposals",
    "RPNHead",
    "RegionProposalNetwork",
    "RoIBoxHeads",
    "RoIMaskBranch",
    "SampledRoIs",
    "check_mask_train_boxes",
    "paste_roi_masks",
    "roi_mask_targets",
]
