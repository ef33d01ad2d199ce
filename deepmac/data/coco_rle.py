"""Checking COCO run-length encodings before pycocotools reads them.

pycocotools trusts its input: a compressed ``counts`` string whose runs do not add up to
``height * width`` decodes to a mask of whatever memory follows (and scores), so a garbled
results file would be scored without a word. ``check_rle`` decodes the counts the way
pycocotools' ``rleFrString`` does (5-bit groups, a continuation bit, a sign bit, runs from
the third on stored as the difference to the run two before) and checks them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_rle", "rle_counts"]

#: A run takes at most 7 groups of 5 bits (35 bits) in a valid string; more is garbage.
_MAX_GROUPS = 7


def rle_counts(counts: str | bytes) -> np.ndarray:
    """The runs ``(M,)`` int64 of a compressed COCO RLE ``counts`` string.

    Raises:
        ValueError: a character outside the alphabet ``'0'..'o'``, a run cut short, or a run
            of more than 35 bits (the message says which).
    """
    raw = counts.encode("ascii", "replace") if isinstance(counts, str) else bytes(counts)
    codes = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48  # (L,)
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if codes.min() < 0 or codes.max() > 63:
        raise ValueError("counts has characters outside '0'..'o'")
    more = (codes & 0x20) != 0  # (L,) continuation bits
    if more[-1]:
        raise ValueError("counts ends inside a run")
    ends = np.flatnonzero(~more)  # (M,) last character of each run
    starts = np.concatenate([[0], ends[:-1] + 1])  # (M,)
    lengths = ends - starts + 1  # (M,)
    if lengths.max() > _MAX_GROUPS:
        raise ValueError(f"counts has a run of {int(lengths.max())} groups (at most 7)")
    position = np.arange(codes.size) - np.repeat(starts, lengths)  # (L,) group within its run
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)  # (M,)
    negative = (codes[ends] & 0x10) != 0  # sign bit of the last group
    values = values - (negative << (5 * lengths))  # two's complement of a 5*len-bit value
    # Runs 3, 4, ... are stored relative to the run two before (pycocotools: ``if (m > 2)``).
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def check_rle(segmentation: dict[str, Any], where: str) -> None:
    """Check an RLE ``{"size": [H, W], "counts": str | bytes | list}``: non-negative runs
    adding up to ``H * W``.

    Raises:
        ValueError: naming ``where``, what was expected and what was found.
    """
    size = segmentation.get("size")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(
            f"{where} field 'segmentation': expected an RLE size [height, width] of two "
            f"positive integers, found {size!r}"
        )
    counts = segmentation.get("counts")
    try:
        if isinstance(counts, (str, bytes)):
            runs = rle_counts(counts)
        elif isinstance(counts, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in counts
        ):
            runs = np.asarray(counts, dtype=np.int64)
        else:
            raise ValueError(f"counts is a {type(counts).__name__}, not a string or integers")
    except ValueError as err:
        raise ValueError(
            f"{where} field 'segmentation': expected COCO RLE counts, found garbage ({err})"
        ) from None
    total = int(size[0]) * int(size[1])
    if (runs < 0).any() or int(runs.sum()) != total:
        raise ValueError(
            f"{where} field 'segmentation': expected RLE runs adding up to {size[0]}x{size[1]} "
            f"= {total} pixels, found {len(runs)} runs adding up to {int(runs.sum())}"
            + (" (some negative)" if (runs < 0).any() else "")
        )
