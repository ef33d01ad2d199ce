"""Location of the embedded demo sample (24 COCO images with their annotations).

The sample is a tiny COCO-format dataset made by ``tools/make_demo_sample.py``; see its
``ATTRIBUTION.md`` for the image licences.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_data_root"]

_DEMO_ROOT = Path(__file__).resolve().parents[1] / "assets" / "demo_coco"


def demo_data_root() -> Path:
    """Root of the embedded demo sample: ``annotations/``, ``train2017/``, ``val2017/``.

    Use as ``CocoInstances(demo_data_root(), "train2017")``.

    Raises:
        FileNotFoundError: the sample is not installed with the package.
    """
    expected = [
        _DEMO_ROOT / "annotations" / f"instances_{s}.json" for s in ("train2017", "val2017")
    ]
    missing = [str(p) for p in expected if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the embedded demo sample is missing (expected {missing}); reinstall deepmac with "
            "its package data, or recreate it with tools/make_demo_sample.py"
        )
    return _DEMO_ROOT
