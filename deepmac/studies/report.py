"""A study's records as a Markdown table (mean +- std per row beside the paper) and a bar
plot with error bars (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from deepmac.studies.tables import SPLITS, Row, Study

SPLIT_LABELS = {"all": "all", "voc": "VOC", "nonvoc": "non-VOC"}


def row_stats(records: list[dict[str, Any]], key: str) -> tuple[float, float, int]:
    """``(mean, sample std (0 for one run), runs)`` of ``key`` over ``records``."""
    values = [r[key] for r in records]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std, len(values)


def _cell(records: list[dict[str, Any]], key: str) -> str:
    mean, std, n = row_stats(records, key)
    return f"{mean:.3f}" if n == 1 else f"{mean:.3f} +- {std:.3f}"


def study_markdown(study: Study, records: list[dict[str, Any]], baseline: dict[str, float]) -> str:
    """The table of ``results.md``: one line per row, mIoU per split (instance-pooled, as the
    paper's Table 4 figure: every instance counts once) with its class-mean beside non-VOC,
    and the paper's figures."""
    seeds = sorted({r["seed"] for r in records})
    steps = sorted({r["steps"] for r in records})
    commits = sorted({r["commit"] for r in records})
    head = ["row", *(f"mIoU {SPLIT_LABELS[s]}" for s in SPLITS), "class-mean mIoU non-VOC"]
    head += ["mask AP non-VOC", f"paper ({study.paper_metric})", "train min/run"]
    lines = [
        f"# {study.title}",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {', '.join(map(str, steps))} steps; commit(s) "
        f"{', '.join(c[:12] for c in commits)}. mIoU from ground-truth boxes, mean +- sample "
        f"std over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        "| filled box | " + " | ".join(f"{baseline[s]:.3f}" for s in SPLITS) + " | - | - | - | - |",
    ]
    for row in study.rows:
        runs = [r for r in records if r["row"] == row.name]
        if not runs:
            continue
        paper = (
            " / ".join(f"{SPLIT_LABELS[s]} {row.paper[s]:.1f}" for s in SPLITS if s in row.paper)
            or "-"
        )
        cells = [_cell(runs, f"mask_iou/{s}/mIoU") for s in SPLITS]
        cells += [_cell(runs, "mask_iou/nonvoc/mIoU_class"), _cell(runs, "segm/nonvoc/AP")]
        minutes = statistics.mean(r["wall_seconds"] for r in runs) / 60
        lines.append(f"| {row.name} | " + " | ".join(cells) + f" | {paper} | {minutes:.0f} |")
    return "\n".join(lines + margins_markdown(study, records)) + "\n"


def margin(
    records: list[dict[str, Any]], row: str, reference: str, key: str
) -> tuple[float, float | None]:
    """``(mean of row - mean of reference, that difference in pooled seed standard
    deviations)`` of ``key``; the second is ``None`` with fewer than 2 seeds in either row or
    no spread at all. Pooled: ``sqrt((std_row^2 + std_reference^2) / 2)``."""
    mean_a, std_a, n_a = row_stats([r for r in records if r["row"] == row], key)
    mean_b, std_b, n_b = row_stats([r for r in records if r["row"] == reference], key)
    pooled = ((std_a**2 + std_b**2) / 2) ** 0.5
    sds = (mean_a - mean_b) / pooled if min(n_a, n_b) > 1 and pooled > 0 else None
    return mean_a - mean_b, sds


def seen_and_unseen(row: Row) -> tuple[str, str] | None:
    """``(seen split, unseen split)`` of a row trained with the masks of one split (VOC or
    non-VOC); ``None`` for all masks or a class list (e.g. person only: both splits hold
    classes it saw no masks for)."""
    from deepmac.config import apply_overrides
    from deepmac.config.presets import get_preset

    cfg = get_preset(row.preset)
    apply_overrides(cfg, list(row.overrides))
    return {"voc": ("voc", "nonvoc"), "nonvoc": ("nonvoc", "voc")}.get(cfg.data.mask_split)


def margins_markdown(study: Study, records: list[dict[str, Any]]) -> list[str]:
    """The lines of the margins table of ``study.comparisons`` (both rows scored), or none:
    per split the difference of means with its size in pooled seed std, and how much larger
    the margin is on the classes the reference row saw no masks for than on those it saw
    (the paper's effect: a deep head gains most on the unseen classes)."""
    scored = {r["row"] for r in records}
    rows = {row.name: row for row in study.rows}
    pairs = [(a, b) for a, b in study.comparisons if a in scored and b in scored]
    if not pairs:
        return []
    head = ["row - reference", *(f"{SPLIT_LABELS[s]} mIoU" for s in SPLITS)]
    head += ["margin on unseen - on seen classes"]
    lines = ["", "Margins (difference of the means; in parentheses, in pooled seed std; unseen: "
             "the split the reference row had no masks of):", ""]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, reference in pairs:
        cells, by_split = [], {}
        for split in SPLITS:
            diff, sds = margin(records, row, reference, f"mask_iou/{split}/mIoU")
            by_split[split] = diff
            cells.append(f"{diff:+.3f}" + (f" ({sds:+.1f} sd)" if sds is not None else ""))
        splits = seen_and_unseen(rows[reference])
        cells.append(f"{by_split[splits[1]] - by_split[splits[0]]:+.3f}" if splits else "-")
        lines.append(f"| {row} - {reference} | " + " | ".join(cells) + " |")
    return lines


def plot_study(
    study: Study, records: list[dict[str, Any]], baseline: dict[str, float], out: Path
) -> Path:
    """Bars of mIoU per row and split with seed std as error bars; the filled box as dashed
    lines. Raises ``ImportError`` without matplotlib."""
    # The object API draws off-screen without switching the process's pyplot backend.
    from matplotlib.figure import Figure

    from deepmac.utils.io import atomic_write

    rows = [row for row in study.rows if any(r["row"] == row.name for r in records)]
    width = 0.8 / len(SPLITS)
    fig = Figure(figsize=(max(5.0, 1.6 * len(rows) + 2), 3.8), layout="constrained")
    axis = fig.subplots()
    for k, split in enumerate(SPLITS):
        stats = [row_stats([r for r in records if r["row"] == row.name], f"mask_iou/{split}/mIoU")
                 for row in rows]  # fmt: skip
        positions = [i + (k - 1) * width for i in range(len(rows))]
        bars = axis.bar(positions, [m for m, _, _ in stats], width, yerr=[s for _, s, _ in stats],
                        capsize=3, label=SPLIT_LABELS[split])  # fmt: skip
        axis.axhline(baseline[split], color=bars.patches[0].get_facecolor(), linestyle="--",
                     linewidth=1)  # fmt: skip
    axis.set_xticks(range(len(rows)), [row.name for row in rows], rotation=15, fontsize=8)
    axis.set_ylabel("mIoU (GT boxes)")
    lows = [r[f"mask_iou/{s}/mIoU"] for r in records for s in SPLITS] + list(baseline.values())
    axis.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(lows) + 0.05))
    axis.legend(fontsize=8, title="split (dashed: filled box)", title_fontsize=7)
    per_row = [sum(r["row"] == row.name for r in records) for row in rows]
    axis.set_title(f"{study.name}: seeds per row {', '.join(map(str, per_row))}; error bars = "
                   f"sample std", fontsize=9)  # fmt: skip
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))
    return out
