"""Range-checked argparse types: a bad value is a usage error (exit 2) before any work.

They import nothing heavy, so ``deepmac --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["float_in", "int_at_least"]


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {low}, found {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, found {value}")
        return value

    return parse


def float_in(low: float, high: float = math.inf) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[low, high]``."""
    expected = f"a number >= {low:g}" if high == math.inf else f"a number in [{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected {expected}, found {value:g}")
        return value

    return parse
