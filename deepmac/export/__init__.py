"""Deployment: ONNX export wrappers, kept apart from the model code, and their parity check."""

from deepmac.export.onnx import (
    BoxPromptedOnnx,
    DeepMACOnnx,
    DeepMARCOnnx,
    check_onnx_parity,
    export_onnx,
    onnx_wrapper,
)

__all__ = [
    "BoxPromptedOnnx",
    "DeepMACOnnx",
    "DeepMARCOnnx",
    "check_onnx_parity",
    "export_onnx",
    "onnx_wrapper",
]
