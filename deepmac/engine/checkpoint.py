"""Atomic training checkpoints (model, optimizer, scheduler, step, config, RNG states) and the
replayable data-loader position (:class:`LoaderCursor`) that makes resuming exact.

Files are written to a temporary file in the target directory and then renamed, so a crash
mid-save never clobbers the previous checkpoint. They load with ``torch.load(weights_only=True)``
(no arbitrary pickled code), which is why RNG states are stored as tensors and plain lists.
"""

from __future__ import annotations

import functools
import os
import pickle
import random
import re
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from deepmac.utils.io import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "RUN_FILES",
    "CheckpointError",
    "LoaderCursor",
    "NotADeepmacCheckpoint",
    "atomic_write",
    "existing_run_files",
    "get_rng_state",
    "load_checkpoint",
    "load_model_state",
    "remove_run_files",
    "remove_stale_temp_files",
    "restore_rng_state",
    "save_checkpoint",
    "state_mismatch",
    "unwrap_model",
]

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format_version", "model_type", "model", "step")
#: What a training run writes into its folder (``deepmac.engine.train``).
RUN_FILES = ("last.pt", "config.json", "metrics.jsonl")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not match what the caller expects."""


class NotADeepmacCheckpoint(CheckpointError):
    """A readable PyTorch file that is no deepmac checkpoint (e.g. a bare ``state_dict``)."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under ``DistributedDataParallel`` and/or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def get_rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU, CUDA if available, python ``random``, numpy) as tensors.

    Python's ``random.getstate()`` tuple and numpy's ``('MT19937', uint32 array, ...)`` tuple are
    converted to int64 tensors and plain scalars, which ``weights_only`` loading accepts.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "name": np_name,
            "key": torch.from_numpy(np_key.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNGs from :func:`get_rng_state` output or a checkpoint holding ``rng``.

    CUDA states are restored only when CUDA is available and the device count matches; a CPU
    run resumed on GPU (or vice versa) keeps its current CUDA RNG.
    """
    state = state.get("rng", state)
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["key"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@functools.lru_cache(maxsize=1)
def _git_sha() -> str | None:
    """Commit of the source tree, for provenance; ``None`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: Optimizer | None,
    scheduler: Any | None,
    step: int,
    config: dict[str, Any],
    model_type: str,
    scaler: torch.amp.GradScaler | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Atomically write a training checkpoint (call it on rank 0 only).

    Args:
        path: destination, e.g. ``out_dir / "last.pt"``.
        model: model to save; DDP / ``torch.compile`` wrappers are removed so the keys carry no
            ``module.`` prefix.
        optimizer: optimizer, or ``None`` for a weights-only export.
        scheduler: LR scheduler (anything with ``state_dict``), or ``None``.
        step: number of optimizer steps completed.
        config: JSON-like run configuration (plain types only).
        model_type: name checked by :func:`load_checkpoint`, e.g. ``"deepmac"``.
        scaler: fp16 ``GradScaler``, if one is used.
        extra: more plain/tensor data (e.g. the data-loader position for exact resume).
    """
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model_type": model_type,
        "step": int(step),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "config": config,
        "rng": get_rng_state(),
        "git_sha": _git_sha(),
        "extra": extra or {},
    }
    write_checkpoint(path, ckpt)


def write_checkpoint(path: str | os.PathLike, ckpt: dict[str, Any]) -> None:
    """Write a checkpoint dict (as :func:`save_checkpoint` builds it, or as
    :func:`load_checkpoint` returns it, updated) atomically: a crash leaves the old file."""
    # ``torch.save`` is looked up at call time so tests can make it fail mid-write.
    atomic_write(path, lambda f: torch.save(ckpt, f))


def _unreadable_reason(err: Exception) -> str:
    """Why ``torch.load`` failed, in our words: torch's own text for refused pickles advises
    retrying with ``weights_only=False``, which would run whatever code the file holds."""
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects{what} that a checkpoint never contains, and was not loaded"
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if not first_line or "weights_only" in first_line:
        return f"{type(err).__name__} (truncated or corrupt file?)"
    return f"{type(err).__name__}: {first_line} (truncated or corrupt file?)"


def state_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    """How the tensors ``found`` (a checkpoint's weights) differ from ``expected`` (a model's
    ``state_dict``), in one line: missing and unexpected names and different shapes, the
    first of each; None when they fit."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [
        k
        for k in expected
        if k in found and tuple(getattr(found[k], "shape", ())) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) the model expects are missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    if reshaped:
        first = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (first {first}: the model expects "
            f"{tuple(expected[first].shape)}, found {tuple(getattr(found[first], 'shape', ()))})"
        )
    return "; ".join(parts) or None


def load_model_state(model: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """``model.load_state_dict(state)`` with a one-line ``CheckpointError`` when the weights do
    not fit (torch's error lists every key, hundreds for a mismatched head)."""
    model = unwrap_model(model)
    problem = state_mismatch(model.state_dict(), state)
    if problem is not None:
        raise CheckpointError(
            f"the weights in {source} do not fit the model of the config they are loaded with: "
            f"{problem}"
        )
    model.load_state_dict(state)


def existing_run_files(out_dir: str | os.PathLike) -> list[str]:
    """The ``RUN_FILES`` a run folder already holds."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).exists()]


def remove_run_files(out_dir: str | os.PathLike) -> None:
    """Delete the ``RUN_FILES`` of ``out_dir`` (``deepmac train --overwrite``), so that a new
    run does not append to the old run's ``metrics.jsonl``."""
    for name in RUN_FILES:
        (Path(out_dir) / name).unlink(missing_ok=True)


def remove_stale_temp_files(out_dir: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic writes of the ``RUN_FILES`` left (``.last.pt.*.tmp``,
    up to a checkpoint's size each). Call it when a run starts, before anything is written;
    returns the files removed."""
    out_dir = Path(out_dir)
    stale = [p for name in RUN_FILES for p in out_dir.glob(f".{name}.*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(
    path: str | os.PathLike, *, expected_model_type: str | None = None
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Args:
        path: checkpoint file, or the name of a bundled model (``deepmac.engine.pretrained``).
        expected_model_type: if given, the checkpoint's ``model_type`` must equal it.

    Returns:
        The checkpoint dict (``model``, ``optimizer``, ``scheduler``, ``scaler``, ``step``,
        ``config``, ``rng``, ``model_type``, ``format_version``, ``git_sha``, ``extra``).

    Raises:
        CheckpointError: (a ``ValueError``) the file is missing, truncated/corrupt, not a
            deepmac checkpoint, from a newer format, or of another model type; or a bare
            word that names no bundled model (with a did-you-mean).
    """
    from deepmac.engine.pretrained import resolve_model_path  # a leaf module: names -> files

    try:
        path = resolve_model_path(path)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files that are not its own: noise here.
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and EOF errors all mean "unreadable" here
        raise CheckpointError(
            f"{path} is not a readable deepmac checkpoint: {_unreadable_reason(err)}; expected "
            f"a file written by deepmac train or deepmac convert-tf"
        ) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED_KEYS):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise NotADeepmacCheckpoint(
            f"{path} is not a deepmac checkpoint: expected keys {list(_REQUIRED_KEYS)}, "
            f"found {found}"
        )
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {ckpt['format_version']}, newer than the supported "
            f"{FORMAT_VERSION}; upgrade deepmac"
        )
    if expected_model_type is not None and ckpt["model_type"] != expected_model_type:
        raise CheckpointError(
            f"{path} holds a {ckpt['model_type']!r} checkpoint, expected {expected_model_type!r}"
        )
    return ckpt


class LoaderCursor:
    """Endless, epoch-after-epoch iteration over a loader, with a replayable position.

    Args:
        loader: an iterable of batches with a fixed number of batches per epoch (e.g. a
            ``DataLoader`` with ``drop_last`` or a fixed-size sampler). ``sampler.set_epoch``
            is called at each epoch start when present.
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.epoch = -1
        self.batches_done = 0  # batches drawn in the current epoch
        self._epoch_start: dict[str, Any] | None = None
        self._iterator: Iterator[Any] | None = None

    def _generators(self) -> list[torch.Generator]:
        # The DataLoader's generator seeds the workers, the sampler's the shuffle; they are often
        # the same object, so deduplicate by identity.
        owners = (
            self.loader,
            getattr(self.loader, "sampler", None),
            getattr(getattr(self.loader, "batch_sampler", None), "sampler", None),
        )
        found: list[torch.Generator] = []
        for owner in owners:
            gen = getattr(owner, "generator", None)
            if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
                found.append(gen)
        return found

    def _begin_epoch(self, epoch: int, snapshot: dict[str, Any] | None = None) -> None:
        generators = self._generators()
        if snapshot is None:
            snapshot = {"rng": get_rng_state(), "generators": [g.get_state() for g in generators]}
        else:
            if len(snapshot["generators"]) != len(generators):
                raise ValueError(
                    f"cannot resume the data order: the checkpoint saw "
                    f"{len(snapshot['generators'])} loader generator(s), this loader has "
                    f"{len(generators)}; build the loader as in the original run"
                )
            restore_rng_state(snapshot["rng"])
            for gen, state in zip(generators, snapshot["generators"], strict=True):
                gen.set_state(state)
        for owner in (
            getattr(self.loader, "sampler", None),
            getattr(self.loader, "batch_sampler", None),
        ):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(epoch)
        self.epoch, self.batches_done, self._epoch_start = epoch, 0, snapshot
        self._iterator = iter(self.loader)

    def next(self) -> Any:
        """The next batch, starting a new epoch when the current one is exhausted.

        Raises:
            RuntimeError: the loader yields no batch in a whole epoch.
        """
        if self._iterator is None:
            self._begin_epoch(0)
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.batches_done == 0:
                raise RuntimeError(
                    "the training loader yielded no batch in a whole epoch"
                ) from None
            self._begin_epoch(self.epoch + 1)
            batch = next(self._iterator, None)
            if batch is None:
                raise RuntimeError(
                    f"the training loader yielded no batch in epoch {self.epoch}"
                ) from None
        self.batches_done += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Epoch, batches drawn in it, and the RNG snapshot taken when it began."""
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "epoch_start": self._epoch_start,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replay the saved position: restore the epoch snapshot, redraw and drop its batches.

        Leaves the global RNGs in an arbitrary state: restore the checkpoint's RNG state after.
        """
        if state["epoch_start"] is None:  # saved before the first batch: nothing to replay
            return
        self._begin_epoch(int(state["epoch"]), state["epoch_start"])
        for i in range(int(state["batches_done"])):
            if next(self._iterator, None) is None:
                raise ValueError(
                    f"cannot resume the data order: epoch {self.epoch} ended after {i} batches, "
                    f"the checkpoint had consumed {state['batches_done']}"
                )
        self.batches_done = int(state["batches_done"])
