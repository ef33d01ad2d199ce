"""Shared test fixtures: locations of the real COCO subsets and the embedded demo sample."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

#: Overrides that shrink ``box_prompted_demo`` to a model trained in seconds (64 px, ResNet-4
#: head, float32), for the tests that go through ``deepmac train`` / ``predict``.
TINY_BOX_PROMPTED_OVERRIDES = [
    "data.image_size=64",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.max_instances=4",
    "model.mask_head=resnet4",
    "model.mask_size=16",
    "model.embedding_head_channels=16",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "train.amp=none",
]


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


def _threads(count: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def two_threads():
    """Torch on two threads for the test, as on the CI machine kind; restored after."""
    yield from _threads(2)


@pytest.fixture
def one_thread():
    """Torch on one thread: tiny models run as fast as on two on an idle machine and do not
    stall for seconds at every OpenMP barrier when the 2 cores are shared (measured 10x)."""
    yield from _threads(1)


@pytest.fixture
def train_steps():
    """``run(model, step, batch, steps=8, lr=1e-3) -> (last losses, totals)``: Adam steps of a
    training ``step(model, None, batch) -> losses`` on one fixed batch, the sum of losses after
    each."""
    import torch

    def run(model, step, batch, steps: int = 8, lr: float = 1e-3):
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        totals = []
        for _ in range(steps):
            losses = step(model, None, batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
        return losses, totals

    return run


@pytest.fixture
def without_annotations():
    """``strip(targets) -> targets``: the same images' target dicts with no instances left."""
    import torch

    def strip(targets):
        return [
            {
                **t,
                "boxes": torch.zeros(0, 4),
                "labels": torch.zeros(0, dtype=torch.long),
                "gt_masks": torch.zeros(0, *t["gt_masks"].shape[1:], dtype=torch.bool),
                "has_mask": torch.zeros(0, dtype=torch.bool),
            }
            for t in targets
        ]

    return strip
