"""Printing metric tables (JSON outputs: ``deepmac.utils.io.write_json_atomic``)."""

from __future__ import annotations

from deepmac.utils.io import write_json_atomic

__all__ = ["print_metrics", "write_json_atomic"]


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
    width = max([10, *(len(c) + 2 for c in columns)])
    label = max([18, *(len(p) + 2 for p in rows)])
    print(" " * label + "".join(f"{c:>{width}s}" for c in columns))
    for prefix, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            if v is None:
                cells.append(" " * width)
            elif isinstance(v, float):
                cells.append(f"{v:{width}.3f}")
            else:
                cells.append(f"{v:{width}d}")
        print(f"{prefix:{label}s}" + "".join(cells))
