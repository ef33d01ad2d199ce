"""Parity rows: one compared quantity against its bound, and the Markdown table of them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Head weights and CenterNet heads: float32 logits after a few dozen convs.
HEAD_BOUND = 1e-4
#: The whole stack (HG-104 + heads + mask head), per the issue.
STACK_BOUND = 1e-3
CROP_BOUND = 1e-5


@dataclass
class ParityRow:
    """One compared quantity: ``max |ours - TF|`` against ``bound`` (``None``: informational),
    with ``max |TF|`` for scale."""

    component: str
    max_abs_diff: float
    bound: float | None
    ref_max_abs: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.bound is None or self.max_abs_diff <= self.bound


def format_table(rows: Iterable[ParityRow]) -> str:
    """A Markdown table: component, max abs diff, bound, max |TF|, pass, note."""
    lines = [
        "| component | max abs diff | bound | max abs TF value | pass | note |",
        "|---|---:|---:|---:|:-:|---|",
    ]
    for r in rows:
        bound = "-" if r.bound is None else f"{r.bound:.0e}"
        verdict = "info" if r.bound is None else ("yes" if r.passed else "**NO**")
        lines.append(
            f"| {r.component} | {r.max_abs_diff:.2e} | {bound} | {r.ref_max_abs:.3g} | "
            f"{verdict} | {r.note} |"
        )
    return "\n".join(lines)


def compare(component: str, ours: Any, ref: Any, bound: float | None, note: str = "") -> ParityRow:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"{component}: shapes differ, ours {ours.shape} vs TF {ref.shape}")
    diff = float(np.abs(ours - ref).max()) if ref.size else 0.0
    return ParityRow(component, diff, bound, float(np.abs(ref).max()) if ref.size else 0.0, note)
