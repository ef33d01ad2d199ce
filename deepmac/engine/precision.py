"""Mixed precision by name: the ``train.amp`` / ``--amp`` values and the autocast they mean.

Training, evaluation and the predictors read ``"bf16"`` the same way, and autocast always runs
on the type of the device the model is on (a CPU autocast around a CUDA model does nothing).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

#: ``train.amp`` / ``--amp`` name -> autocast dtype (None: float32, no autocast).
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def amp_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of an ``AMP_DTYPES`` name."""
    if name not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {name!r}")
    return AMP_DTYPES[name]


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type ("cuda" for ``cuda:1``), or a no-op context
    for ``dtype=None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
