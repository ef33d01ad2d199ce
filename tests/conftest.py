"""Shared test fixtures: locations of the real COCO subsets and the embedded demo sample."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _coco_root(name: str) -> Path:
    root = SHARED_DATA / name
    if not (root / "annotations").is_dir():
        pytest.skip(f"{root} is absent: the shared COCO subsets are not on this machine")
    return root


@pytest.fixture(scope="session")
def coco_tiny_root() -> Path:
    """``../shared/data/coco_tiny`` (skips when absent)."""
    return _coco_root("coco_tiny")


@pytest.fixture(scope="session")
def coco_mini_root() -> Path:
    """``../shared/data/coco_mini`` (skips when absent)."""
    return _coco_root("coco_mini")
