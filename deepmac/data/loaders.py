"""Train and eval DataLoaders: dataset concatenation, seeding and distributed sampling.

Reproducibility: the loader's ``torch.Generator`` is seeded with ``seed + rank``. PyTorch draws
each epoch's worker base seed from it and seeds worker ``i``'s torch RNG with ``base + i``;
:func:`seed_worker` passes that seed on to ``random`` and ``numpy``. The same seed therefore
gives the same shuffling and augmentations, while epochs and workers still differ (a fixed
``seed + worker_id`` would repeat the same augmentations every epoch).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    Dataset,
    DistributedSampler,
    Sampler,
)

from deepmac.data.collate import collate_instances

__all__ = ["build_eval_loader", "build_train_loader", "concat_datasets", "seed_worker"]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and ``numpy`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32  # base seed (from the loader generator) + worker_id
    random.seed(seed)
    np.random.seed(seed)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def concat_datasets(datasets: Dataset | Sequence[Dataset]) -> Dataset:
    """One dataset, or a ``ConcatDataset`` of several that share their category ids.

    Raises:
        ValueError: no dataset given, or datasets whose ``category_ids`` differ (their contiguous
            labels would then mean different classes).
    """
    if isinstance(datasets, Dataset):
        return datasets
    datasets = list(datasets)
    if not datasets:
        raise ValueError("expected at least one dataset, got none")
    if len(datasets) == 1:
        return datasets[0]
    reference = getattr(datasets[0], "category_ids", None)
    for other in datasets[1:]:
        found = getattr(other, "category_ids", None)
        if found != reference:
            raise ValueError(
                "datasets to concatenate must share category ids (contiguous labels would "
                f"differ): "
                f"{datasets[0]!r} has {reference}, {other!r} has {found}"
            )
    return ConcatDataset(datasets)


def build_train_loader(
    datasets: Dataset | Sequence[Dataset],
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    *,
    size_divisibility: int = 1,
    drop_last: bool = True,
    persistent_workers: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffling, seeded training loader over one or several datasets.

    Under ``torch.distributed`` a ``DistributedSampler`` (seeded with ``seed``) shards the data and
    ``batch_size`` is per process; call ``loader.sampler.set_epoch(epoch)`` each epoch then.

    Args:
        datasets: a dataset, or several (e.g. repeated ``--data-root``) to concatenate.
        batch_size: images per batch (per process). num_workers: DataLoader processes.
        seed: base seed of shuffling and augmentation.
        size_divisibility: passed to :func:`collate_instances`. drop_last: drop the last
            incomplete batch. persistent_workers: keep workers across epochs (needs
            ``num_workers > 0``). pin_memory: pin batches for host-to-GPU copies.

    Returns:
        DataLoader yielding ``(ImageBatch, list[target])``.

    Raises:
        ValueError: non-positive ``batch_size``, or fewer images than one batch with
            ``drop_last``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = concat_datasets(datasets)
    rank, world_size = _dist_info()
    if drop_last and len(dataset) < batch_size * world_size:
        raise ValueError(
            f"training set has {len(dataset)} images, fewer than one batch of {batch_size} "
            f"x {world_size} process(es); lower batch_size or pass drop_last=False"
        )
    generator = torch.Generator().manual_seed(seed + rank)
    # One sampler for 1 or N processes: the permutation of epoch e is randperm(seed + e) and
    # rank r takes every N-th index from r, so step t of N processes with batch B sees exactly
    # the images of step t of one process with batch N x B.
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_last
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate_instances, size_divisibility=size_divisibility),
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        pin_memory=pin_memory,
    )


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` in order: every image exactly once over all ranks.

    Unlike ``DistributedSampler`` it never pads with duplicates, which would bias evaluation.
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_eval_loader(
    datasets: Dataset | Sequence[Dataset],
    batch_size: int = 1,
    num_workers: int = 0,
    *,
    size_divisibility: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Sequential evaluation loader (sharded without duplicates under ``torch.distributed``).

    Args:
        datasets: a dataset or several to concatenate (in order).
        batch_size: images per batch (the official eval uses 1).
        num_workers: DataLoader worker processes.
        size_divisibility: passed to :func:`collate_instances`.
        pin_memory: pin batches for faster host-to-GPU copies.

    Returns:
        DataLoader yielding ``(ImageBatch, list[target])`` in dataset order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dataset = concat_datasets(datasets)
    rank, world_size = _dist_info()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world_size),
        num_workers=num_workers,
        collate_fn=functools.partial(collate_instances, size_divisibility=size_divisibility),
        worker_init_fn=seed_worker,
        pin_memory=pin_memory,
    )
