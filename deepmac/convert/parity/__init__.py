"""Numerical parity of converted weights with the official TensorFlow code.

Each check builds an official TF model with random weights *and* random biases, BatchNorm scales,
offsets and moving statistics (so that a mis-mapped bias or statistic shows up), runs it in
inference mode, saves it as a TF2 checkpoint, converts that checkpoint with the public converter
(``deepmac.convert.convert_tf``, i.e. the user path, names included) and runs our model on the
same input. Every check returns ``ParityRow`` s: the max absolute difference and its bound.

Requirements (none of them is a deepmac dependency): TensorFlow with ``tf-keras`` (legacy Keras:
the OD API uses ``tf.keras`` 2), ``tf-models-official`` for Deep-MARC, and the Object Detection
API's ``research/object_detection`` files (``models_dir``: the folder holding
``object_detection/`` or ``research/``; default ``$DEEPMAC_TF_MODELS_DIR``, then
``../tf_od_api`` beside the repository). ``prepare_tensorflow`` must run before TensorFlow is
first imported: it selects legacy Keras and the pure-Python protobuf runtime (the OD API's
generated ``*_pb2.py`` predate protobuf 4).

The checks: every Deep-MAC mask head of the official code (``MaskHeadNetwork``), the Deep-MARC
heads (``DeepMaskHead``), the HG-104 backbone and the CenterNet prediction heads of a whole
``DeepMACMetaArch``, the whole stack on one image in the official order (preprocess, predict,
mask head at boxes, postprocess), a SavedModel export of that model, and the crop op.

Modules: ``report`` (``ParityRow``, bounds, the table), ``environment`` (finding the OD API,
setting TensorFlow up for it), ``tf_weights`` (random TF weights, checkpoint, conversion),
``heads``, ``ops`` (crop op, upsampling conventions) and ``whole_model``: one per suite.
"""

from deepmac.convert.parity.environment import (
    environment_line,
    find_models_dir,
    prepare_tensorflow,
)
from deepmac.convert.parity.heads import (
    DEEPMAC_HEAD_NAMES,
    DEEPMARC_VARIANTS,
    check_deepmac_heads,
    check_deepmarc_heads,
)
from deepmac.convert.parity.ops import check_conventions, check_crop_and_resize
from deepmac.convert.parity.report import ParityRow, format_table
from deepmac.convert.parity.tf_weights import Manifest
from deepmac.convert.parity.whole_model import build_tf_deepmac, check_deepmac_model

__all__ = [
    "DEEPMAC_HEAD_NAMES",
    "DEEPMARC_VARIANTS",
    "Manifest",
    "ParityRow",
    "build_tf_deepmac",
    "check_conventions",
    "check_crop_and_resize",
    "check_deepmac_heads",
    "check_deepmac_model",
    "check_deepmarc_heads",
    "environment_line",
    "find_models_dir",
    "format_table",
    "prepare_tensorflow",
]
