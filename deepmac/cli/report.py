"""Printing metric tables and writing JSON outputs atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write JSON to ``path`` through a temporary file and a rename, so a crash never leaves a
    half-written file in place of a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def print_metrics(metrics: dict[str, float | int], title: str | None = None) -> None:
    """Print ``{'segm/nonvoc/AP': 0.31, ...}`` as a table: one row per prefix, one column per
    metric name."""
    rows: dict[str, dict[str, float | int]] = {}
    for key, value in metrics.items():
        prefix, _, name = key.rpartition("/")
        rows.setdefault(prefix or "-", {})[name] = value
    columns: list[str] = []
    for values in rows.values():
        columns += [c for c in values if c not in columns]
    if title:
        print(title)
    print(f"{'':18s}" + "".join(f"{c:>10s}" for c in columns))
    for prefix, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            cells.append(
                f"{'':>10s}" if v is None else f"{v:10.3f}" if isinstance(v, float) else f"{v:10d}"
            )
        print(f"{prefix:18s}" + "".join(cells))
