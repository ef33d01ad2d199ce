"""Name table of the whole Deep-MAC model (``DeepMACMetaArch`` of the TF Object Detection API).

Source paths are under ``model/`` (training and exported checkpoints, ``tf.train.Checkpoint(
model=...)``) or ``_model/`` (SavedModels written by ``exporter_lib_v2``). Attributes of
``DeepMACMetaArch`` and where they go:

==========================================  =================================================
TF                                          PyTorch ``DeepMAC``
==========================================  =================================================
``_feature_extractor/_network/``            ``backbone.`` (HG104, ``HOURGLASS_STACKED_RULES``)
``_prediction_head_dict/object_center/s``   ``heatmap_heads.s``
``_prediction_head_dict/box.Sscale/s``      ``size_heads.s``     (``box/scale``, escaped)
``_prediction_head_dict/box.Soffset/s``     ``offset_heads.s``
``_prediction_head_dict/INSTANCE_EMBEDDING``  ``instance_heads.s``
``_prediction_head_dict/PIXEL_EMBEDDING``   ``pixel_heads.s``
``_mask_net/``                              ``mask_branch.head.`` (``heads_names``)
==========================================  =================================================

Each prediction head is a Keras ``Sequential`` (3x3 conv, ReLU, 1x1 conv), whose layers with
weights are ``layer_with_weights-0`` and ``-1``; ours is ``nn.Sequential`` with the ReLU at
index 1, so they become ``.0`` and ``.2``. The backbone's first convolution was trained on BGR
input and is reversed to read RGB (``input_channel_reversals``).
"""

from __future__ import annotations

from deepmac.convert.heads_names import (
    HOURGLASS_RULES,
    HOURGLASS_STACKED_RULES,
    mask_head_scopes,
)
from deepmac.convert.names import COMMON_SKIPS, NameTable, Rule, Scope, nested

__all__ = [
    "COCO_LABEL_MAP",
    "DEEPMAC_PROBES",
    "DEEPMAC_ROOTS",
    "MASK_NET_PREFIX",
    "PREDICTION_HEAD_RULES",
    "coco_label_map_90",
    "deepmac_table",
]

DEEPMAC_ROOTS = ("model/", "_model/")
MASK_NET_PREFIX = "_mask_net/"

PREDICTION_HEAD_RULES: tuple[Rule, ...] = (
    (r"^object_center/(\d+)/", r"heatmap_heads/\1/"),
    (r"^box\.Sscale/(\d+)/", r"size_heads/\1/"),
    (r"^box\.Soffset/(\d+)/", r"offset_heads/\1/"),
    (r"^INSTANCE_EMBEDDING/(\d+)/", r"instance_heads/\1/"),
    (r"^PIXEL_EMBEDDING/(\d+)/", r"pixel_heads/\1/"),
    (r"/layer_with_weights-0/$", "/0/"),  # 3x3 conv (hidden, with bias)
    (r"/layer_with_weights-1/$", "/2/"),  # 1x1 output conv (index 1 is the ReLU)
)

#: Hyper-parameters read from variable shapes (relative to the root): name -> (variable, axis).
#: ``instance_embedding_dim`` is optional (absent without ``use_instance_embedding``).
DEEPMAC_PROBES: dict[str, tuple[str, int]] = {
    "num_classes": ("_prediction_head_dict/object_center/0/layer_with_weights-1/bias", 0),
    "embedding_head_channels": (
        "_prediction_head_dict/object_center/0/layer_with_weights-0/bias",
        0,
    ),
    "pixel_embedding_dim": ("_prediction_head_dict/PIXEL_EMBEDDING/0/layer_with_weights-1/bias", 0),
    "instance_embedding_dim": (
        "_prediction_head_dict/INSTANCE_EMBEDDING/0/layer_with_weights-1/bias",
        0,
    ),
}


def deepmac_table(mask_head: str, roots: tuple[str, ...] = DEEPMAC_ROOTS) -> NameTable:
    """The Deep-MAC name table for a model whose mask head is ``mask_head`` (a
    ``TF_DEEPMAC_HEADS`` name)."""
    return NameTable(
        family="deepmac",
        roots=roots,
        scopes=(
            Scope(
                "_feature_extractor/_network/",
                "backbone/",
                HOURGLASS_RULES + HOURGLASS_STACKED_RULES,
            ),
            Scope("_prediction_head_dict/", "", PREDICTION_HEAD_RULES),
            *nested(mask_head_scopes(mask_head), MASK_NET_PREFIX, "mask_branch/head/"),
        ),
        skips=COMMON_SKIPS,
        input_channel_reversals=("backbone.input_conv.conv.weight",),
    )


#: The COCO 2017 label map of the OD API (``mscoco_label_map.pbtxt``): heatmap channel ``c`` of the
#: released COCO models is category id ``c + 1``; ids 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83
#: are unused by COCO 2017 but still have a channel.
COCO_LABEL_MAP: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip


def coco_label_map_90(num_classes: int) -> tuple[list[int], list[str]]:
    """``(category_ids, class_names)`` of ``num_classes`` heatmap channels: channel ``c`` is
    COCO id ``c + 1`` (unused ids are named ``"unused-<id>"``; for a non-COCO model every
    channel past 90 is ``"class-<id>"``)."""
    ids = list(range(1, num_classes + 1))
    names = [COCO_LABEL_MAP.get(i, f"unused-{i}" if i <= 90 else f"class-{i}") for i in ids]
    return ids, names
