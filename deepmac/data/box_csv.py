"""Boxes from a CSV file with a header: ``image,x1,y1,x2,y2[,label][,score]``.

The box columns are named by the box format: ``x1,y1,x2,y2`` (corners, the default for CSV)
or ``x,y,w,h`` (COCO's corner and size). ``image`` is a file name (or a path ending in one);
``label`` a class name or integer category id (``object`` when absent or empty); ``score`` a
finite number, or empty. Other columns are ignored. Every error names the file, the line
and the column.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CSV_COLUMNS", "CsvBox", "read_box_csv"]

#: The coordinate columns of each box format.
CSV_COLUMNS = {"xyxy": ("x1", "y1", "x2", "y2"), "xywh": ("x", "y", "w", "h")}


@dataclass(frozen=True)
class CsvBox:
    """One row: ``image`` as written, ``box`` the 4 numbers in the file's box format,
    ``label`` (``object`` when none), ``score`` (None when none), and ``where``
    (``FILE line N``)."""

    image: str
    box: tuple[float, float, float, float]
    label: str
    score: float | None
    where: str


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"{where} column {column!r}: expected a finite number, found {text!r}")
    return value


def read_box_csv(path: str | Path, box_format: str) -> list[CsvBox]:
    """The rows of a boxes CSV file, in file order.

    Raises:
        ValueError: no header with ``image`` and the box format's columns (the message says
            which format the header's columns fit, if the other one), or a row with an empty
            image or a coordinate or score that is not a finite number.
    """
    path = Path(path)
    wanted = CSV_COLUMNS[box_format]
    expected = f"image,{','.join(wanted)}[,label][,score]"
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f, skipinitialspace=True)
        header = [name.strip().lower() for name in reader.fieldnames or []]
        if "image" not in header or not set(wanted) <= set(header):
            other = next(
                (
                    fmt
                    for fmt, cols in CSV_COLUMNS.items()
                    if fmt != box_format and set(cols) <= set(header)
                ),
                None,
            )
            hint = f"; its columns are {other}: pass --box-format {other}" if other else ""
            raise ValueError(
                f"{path} line 1: expected a header {expected} (--box-format {box_format}), "
                f"found {','.join(header) or 'nothing'}{hint}"
            )
        reader.fieldnames = header
        rows = []
        for row in reader:
            where = f"{path} line {reader.line_num}"
            image = (row.get("image") or "").strip()
            if not image:
                raise ValueError(f"{where} column 'image': expected a file name, found nothing")
            box = tuple(_number(row.get(c) or "", where, c) for c in wanted)
            label = (row.get("label") or "").strip() or "object"
            score_text = (row.get("score") or "").strip()
            score = _number(score_text, where, "score") if score_text else None
            rows.append(CsvBox(image, box, label, score, where))
    return rows
