"""JSONL metrics log (one JSON object per line, DETR ``log.txt`` style) and JSON config dump.

Train lines look like ``{"type": "train", "step": 20, "lr": ..., "loss": ..., "loss_mask": ...,
"images_per_s": ..., "elapsed_s": ...}`` and eval lines like ``{"type": "eval", "step": 1000,
...metrics}``. Read them back with :func:`read_metrics`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmac.utils import io
from deepmac.utils.logs import LOG_FORMAT

__all__ = ["MetricsLog", "read_metrics", "setup_logging", "to_jsonable", "write_json_atomic"]

logger = logging.getLogger(__name__)


def setup_logging(
    *, main_process: bool, level: int = logging.INFO, log_file: str | os.PathLike | None = None
) -> None:
    """Configure the ``deepmac`` logger: INFO to stderr (and ``log_file``) on rank 0 only.

    Other ranks log warnings and errors only, so a multi-process run prints each message once.
    Call it once, from the entry point (library modules never configure logging).

    Args:
        main_process: ``is_main_process()`` of this process.
        level: level on rank 0.
        log_file: optional text log (rank 0 only), appended to.
    """
    root = logging.getLogger("deepmac")
    root.setLevel(level if main_process else logging.WARNING)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if main_process and log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for handler in list(root.handlers):  # idempotent: replace what an earlier call installed
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)


def to_jsonable(value: Any) -> Any:
    """Convert tensors, numpy values, paths and containers to JSON-serialisable Python.

    Non-finite floats become the strings ``"nan"`` / ``"inf"`` / ``"-inf"`` because strict JSON
    has no NaN and other tools (``jq``, browsers) reject Python's ``NaN`` extension.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return to_jsonable(value.item() if value.numel() == 1 else value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (temp file + rename)."""
    io.write_json_atomic(path, to_jsonable(obj))


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file, skipping a truncated last line from a crash."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("skipping unparsable line in %s: %.80s", path, line)
    return records


class MetricsLog:
    """Append-only JSONL writer; a disabled instance (non-zero ranks) writes nothing.

    Every record is flushed immediately (the file is opened per write), so a crash loses at most
    the line being written, and a resumed run keeps appending to the same file.

    Args:
        path: the ``.jsonl`` file.
        enabled: ``False`` on ranks other than 0.
    """

    def __init__(self, path: str | os.PathLike, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._board = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def open_tensorboard(self, folder: str | os.PathLike, first_step: int) -> None:
        """Also write each record's numbers as TensorBoard scalars (``TYPE/NAME`` at its
        step) to ``folder``, dropping the events a previous run left there from
        ``first_step`` on (a resumed run, or a replaced one, logs those steps anew).

        Raises:
            ImportError: the ``tensorboard`` package is not installed.
        """
        if not self.enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "train.tensorboard=true needs the tensorboard package: "
                "pip install 'deepmac[tensorboard]'"
            ) from None
        self._board = SummaryWriter(os.fspath(folder), purge_step=first_step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any (the JSONL file is never held)."""
        if self._board is not None:
            self._board.close()
            self._board = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line (and as TensorBoard scalars)."""
        if not self.enabled:
            return
        line = json.dumps(to_jsonable(record), sort_keys=False)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self._board is not None and "step" in record:
            kind = record.get("type", "train")
            for key, value in record.items():
                if key not in ("type", "step") and isinstance(value, int | float):
                    self._board.add_scalar(f"{kind}/{key}", value, int(record["step"]))
            self._board.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` (written after the checkpoint a run resumes from).

        Without this, a run that crashed after its last checkpoint would log those steps twice.
        """
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        io.atomic_write(self.path, lambda f: f.write(text.encode("utf-8")))
