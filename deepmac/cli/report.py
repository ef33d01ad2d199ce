"""Printing metric tables (JSON outputs: ``deepmac.io.write_json_atomic``)."""

from __future__ import annotations

from deepmac.io import write_json_atomic

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
    print(f"{'':18s}" + "".join(f"{c:>10s}" for c in columns))
    for prefix, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            cells.append(
                f"{'':>10s}" if v is None else f"{v:10.3f}" if isinstance(v, float) else f"{v:10d}"
            )
        print(f"{prefix:18s}" + "".join(cells))
