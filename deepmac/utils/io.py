"""Atomic file writes: a reader (or a crash) sees the old file or the complete new one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` on a temp file in the same directory, then rename.

    ``os.replace`` within one directory (hence one filesystem) is atomic, so readers see either
    the old file or the complete new one; the directory is fsynced after it, so the rename
    survives a crash. On any failure the temp file is removed and the old file is left
    untouched (a killed process leaves ``.NAME.*.tmp``, which
    ``deepmac.engine.checkpoint.remove_stale_temp_files`` removes at the next start).

    Args:
        path: destination file; its directory is created if needed.
        write: callback writing the full content to the binary file object it receives.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable: without it, a power cut after ``os.replace``
    may leave the old directory entry (or none). Platforms that cannot open a directory
    (Windows) skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON, atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=indent is not None)
    return atomic_write(path, lambda f: f.write((text + "\n").encode("utf-8")))
