"""Name table of the Deep-MARC mask head (Model Garden ``DeepMaskHead``,
``official/projects/deepmac_maskrcnn/modeling/heads/instance_heads.py``).

A Model Garden Mask R-CNN checkpoint holds the head under ``model/mask_head/`` (the task's
``tf.train.Checkpoint(model=...)``; ``_model/mask_head/`` in a SavedModel). Only the mask head is
converted: the detector around it (backbone, FPN decoder, RPN, box head) is reported as skipped,
because deepmac has no TF-compatible PyTorch Mask R-CNN to receive it.

==========================  ================================================
TF ``DeepMaskHead``         PyTorch ``deepmac.mask_heads.DeepMaskHead``
==========================  ================================================
``_convs/i``                ``convnet.i.conv``   (``default`` variant)
``_conv_norms/i``           ``convnet.i.norm``
``_hourglass/``             ``convnet.``         (hourglass variants, single stack)
``_deconv``                 ``deconv``           (Conv2DTranspose, k = s = upsample_factor)
``_deconv_bn``              ``deconv_bn``
``_mask_regressor``         ``mask_regressor``   (1x1 to 1 logit, class-agnostic)
==========================  ================================================
"""

from __future__ import annotations

from deepmac.convert.heads_names import HOURGLASS_RULES, HOURGLASS_SINGLE_RULES
from deepmac.convert.names import COMMON_SKIPS, NameTable, Scope, SkipRule

__all__ = [
    "DEEPMARC_DETECTOR_SKIPS",
    "DEEPMARC_ROOTS",
    "DEEPMARC_SCOPES",
    "DEEPMARC_PROBES",
    "deepmarc_table",
]

DEEPMARC_ROOTS = ("model/mask_head/", "_model/mask_head/", "mask_head/")

#: The rest of a Deep-MARC Mask R-CNN checkpoint, named so that the report says what it is.
DEEPMARC_DETECTOR_SKIPS: tuple[SkipRule, ...] = (
    (
        r"^_?model/(backbone|decoder|rpn_head|detection_head|roi_generator|roi_sampler|"
        r"roi_aligner|detection_generator|mask_sampler|mask_roi_aligner)/",
        "part of the Deep-MARC detector, not its mask head (--model deepmarc converts the mask "
        "head only)",
    ),
)

DEEPMARC_SCOPES: tuple[Scope, ...] = (
    Scope("_convs/", "convnet/", ((r"^(\d+)/", r"\1/conv/"),)),
    Scope("_conv_norms/", "convnet/", ((r"^(\d+)/", r"\1/norm/"),)),
    Scope("_hourglass/", "convnet/", HOURGLASS_RULES + HOURGLASS_SINGLE_RULES),
    Scope("_deconv/", "deconv/"),
    Scope("_deconv_bn/", "deconv_bn/"),
    Scope("_mask_regressor/", "mask_regressor/"),
)

#: Shapes that give the head's hyper-parameters (relative to the head).
DEEPMARC_PROBES: dict[str, str] = {
    # (f, f, num_filters, trunk_channels): upsample_factor and num_filters.
    "deconv": "_deconv/kernel",
    # (1, 1, num_filters, 1) when class-agnostic, (..., num_classes) otherwise.
    "mask_regressor": "_mask_regressor/kernel",
    # (3, 3, C_in, width) of the first conv of either variant.
    "first_conv_default": "_convs/0/kernel",
    "first_conv_hourglass": "_hourglass/conv_input/conv_block/conv/kernel",
}


def deepmarc_table(roots: tuple[str, ...] = DEEPMARC_ROOTS) -> NameTable:
    """The Deep-MARC mask-head name table (one for every convnet variant: a variant's scopes
    simply find no variables of the others)."""
    return NameTable(
        family="deepmarc",
        roots=roots,
        scopes=DEEPMARC_SCOPES,
        skips=COMMON_SKIPS + DEEPMARC_DETECTOR_SKIPS,
    )
