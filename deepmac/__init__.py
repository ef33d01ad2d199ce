"""deepmac: partially supervised instance segmentation with deep mask heads (Deep-MAC).

The Python API, importable from the package::

    from deepmac import BoxPromptedSegmenter, load_model
    seg = BoxPromptedSegmenter.from_pretrained("box-prompted-all")  # a bundled model
    seg = BoxPromptedSegmenter.from_checkpoint("runs/demo/last.pt")
    masks, scores = seg.predict(image, [[x1, y1, x2, y2]])   # (N, H, W) bool, (N,) numpy
    instances = load_model("runs/deepmac/last.pt").predict(image)   # Deep-MAC detections

They are imported on first use (PEP 562), so ``import deepmac`` and ``deepmac --help`` stay
free of torch.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "BoxPromptedSegmenter": "deepmac.inference.segmenter",
    "DeepMACPredictor": "deepmac.inference.detector",
    "Instances": "deepmac.inference.detector",
    "load_model": "deepmac.inference.detector",
    "MASK_HEADS": "deepmac.mask_heads",
    "build_mask_head": "deepmac.mask_heads",
    "build_model": "deepmac.models.families",
    "MODEL_FAMILIES": "deepmac.models.families",
    "get_family": "deepmac.models.families",
    "bundled_names": "deepmac.engine.pretrained",
    "get_preset": "deepmac.config.presets",
    "run_training": "deepmac.experiments.training",
}

__all__ = [*_EXPORTS, "__version__"]

try:
    __version__ = version("deepmac")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deepmac' has no attribute {name!r}")
