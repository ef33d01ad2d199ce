"""Mixed precision by name: the ``train.amp`` / ``--amp`` values and the autocast they mean.

Training, evaluation and the predictors read ``"bf16"`` the same way, and autocast always runs
on the type of the device the model is on (a CPU autocast around a CUDA model does nothing).

On a CPU without oneDNN kernels of the dtype (bf16 needs AVX512 or AMX on x86; fp16 needs
AVX512-FP16 or AMX-FP16) autocast would run it through PyTorch's reference loops: a
``box_prompted_cpu`` step took 30 s in bf16 against 3.4 s in float32 on an AVX2-only AMD EPYC
(2026-12-02). There, ``run_dtype`` gives float32 instead, with one warning per process, so a
preset chosen for speed on one CPU does not cost 9x on another.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from contextlib import AbstractContextManager

import torch

logger = logging.getLogger(__name__)

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


@functools.cache
def cpu_has_kernels(dtype: torch.dtype) -> bool:
    """Whether this CPU runs ``dtype`` (bf16 or fp16) matmuls and convolutions in oneDNN
    kernels, not in PyTorch's slow reference loops."""
    name = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    try:
        return bool(getattr(torch.ops.mkldnn, name[dtype])())
    except (AttributeError, RuntimeError):  # an older or other build: judge by the ISA
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


@functools.cache
def _warn_float32(dtype: torch.dtype) -> None:
    logger.warning(
        "amp %s: this CPU (%s) has no %s kernels (emulated, about 9x slower than float32); "
        "running in float32 instead",
        {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype)),
        torch.backends.cpu.get_cpu_capability(),
        dtype,
    )


def run_dtype(dtype: torch.dtype | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype to run ``dtype`` with on ``device``: ``dtype`` itself, except
    ``None`` (float32) on a CPU without kernels of it (``cpu_has_kernels``; warned once)."""
    if dtype is None or torch.device(device).type != "cpu" or cpu_has_kernels(dtype):
        return dtype
    _warn_float32(dtype)
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type ("cuda" for ``cuda:1``), or a no-op context
    for ``dtype=None`` and where ``run_dtype`` gives float32."""
    dtype = run_dtype(dtype, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
