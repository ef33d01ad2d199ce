"""TensorFlow -> PyTorch conversion of the official Deep-MAC / Deep-MARC weights.

``convert_tf(src, "deepmac")`` reads a TF2 checkpoint or SavedModel (TensorFlow is an optional
extra: ``pip install tensorflow-cpu``) and returns the PyTorch model with a report of where every
variable went; ``save_conversion`` writes it as a deepmac checkpoint. The command line is
``deepmac convert-tf SRC --model {deepmac,deepmarc,head:NAME} --out OUT.pt``.

Modules: ``tf_checkpoint`` (reading, canonical variable names), ``names`` (the name-table
machinery), ``heads_names`` / ``deepmac_names`` / ``deepmarc_names`` (one table per model
family), ``layouts`` (kernel layouts and TF conventions), ``transfer`` (copying variables
through a name table, the report), ``convert`` (plans per family and the driver),
``parity`` (numerical checks against the official TF code; needs TensorFlow and the OD API).
"""

from deepmac.convert.convert import (
    MODEL_SPECS,
    Conversion,
    ConversionError,
    ConversionReport,
    ConvertOptions,
    convert_tf,
    convert_weights,
    load_mask_head,
    save_conversion,
)
from deepmac.convert.tf_checkpoint import (
    InMemoryWeights,
    TensorFlowNotInstalled,
    read_tf_weights,
)

__all__ = [
    "MODEL_SPECS",
    "Conversion",
    "ConversionError",
    "ConversionReport",
    "ConvertOptions",
    "InMemoryWeights",
    "TensorFlowNotInstalled",
    "convert_tf",
    "convert_weights",
    "load_mask_head",
    "read_tf_weights",
    "save_conversion",
]
