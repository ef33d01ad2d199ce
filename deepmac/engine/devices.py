"""Device names as the CLI and the predictors take them ("cpu", "cuda", "cuda:1", "auto"), and
the device a module lives on."""

from __future__ import annotations

import torch
from torch import nn

#: What ``--device`` offers; ``resolve_device`` also takes an indexed ``cuda:N``.
DEVICE_CHOICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``: "auto" is CUDA when torch sees a GPU, else the CPU.

    Raises:
        ValueError: an unparsable name, or a CUDA device torch does not see.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be one of {', '.join(DEVICE_CHOICES)} or cuda:N, got {device!r}"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device} but torch sees no CUDA device (CPU build or no GPU)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device} but torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
    return resolved


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for an empty module."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def place_model(model: torch.nn.Module, device: str | torch.device | None) -> torch.nn.Module:
    """``model`` in eval mode, moved to ``device`` (``resolve_device`` names), or left where it
    is for None (a model under training is evaluated where it trains)."""
    if device is not None:
        model = model.to(resolve_device(device))
    return model.eval()
