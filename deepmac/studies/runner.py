"""Run a study: every row with every seed, each run trained, scored and recorded once.

``OUT/<row>_s<seed>/`` is a training run folder plus ``record.json`` once it is scored; a
study started again reuses the records and resumes unfinished runs from their ``last.pt``,
so an interrupted study continues where it stopped. ``OUT/results.json`` holds every record,
``OUT/results.md`` the mean +- std table beside the paper, ``OUT/STUDY.png`` the bars.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepmac.config import ExperimentConfig, apply_overrides, flatten_config
from deepmac.studies.tables import SPLITS, Row, Study
from deepmac.utils.io import write_json_atomic

logger = logging.getLogger(__name__)

#: The metrics a record keeps of an evaluation
#: (``deepmac.evaluation.evaluate.evaluate_box_prompted``).
RECORDED = tuple(f"mask_iou/{s}/{m}" for s in SPLITS for m in ("mIoU", "mIoU_class"))
RECORDED += tuple(f"segm/{s}/AP" for s in SPLITS)


@dataclass
class StudyData:
    """Where a study trains and scores: ``train`` roots (``ROOT@SPLIT``) and the ``val``
    root whose ``val2017`` split scores every run (its images are left out of training)."""

    train: list[str]
    val: str
    val_split: str = "val2017"
    exclude: list[str] = field(default_factory=list)

    @classmethod
    def shared(cls, data: Path) -> StudyData:
        """The shared COCO subsets: coco_tiny train + val and coco_mini train, scored on
        coco_mini val2017 (the split of docs/results.md)."""
        return cls(
            train=[
                f"{data / 'coco_tiny'}@train2017",
                f"{data / 'coco_tiny'}@val2017",
                f"{data / 'coco_mini'}@train2017",
            ],
            val=str(data / "coco_mini"),
        )


def git_commit() -> str:
    """The commit of the code that ran, ``+dirty`` with uncommitted changes; ``unknown``
    outside a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def run_config(
    row: Row, seed: int, steps: int | None, data: StudyData, overrides: list[str]
) -> ExperimentConfig:
    """The config of one run: the row's preset, the study data, the seed and steps, the
    row's overrides, then the command line's."""
    from deepmac.backbones import IMAGENET_WEIGHTS
    from deepmac.config.presets import get_preset

    cfg = get_preset(row.preset)
    cfg.name = row.slug
    cfg.data.roots = list(data.train)
    cfg.data.val_root = data.val
    cfg.data.val_split = data.val_split
    cfg.data.exclude_from_training = list(data.exclude)
    cfg.train.seed = seed
    if steps is not None:
        cfg.train.steps = steps
    cfg.model.backbone_init = None
    apply_overrides(cfg, [*row.overrides, *overrides])
    # ImageNet weights where the (overridden) backbone has them, unless an override chose.
    if cfg.model.backbone_init is None and cfg.model.backbone in IMAGENET_WEIGHTS:
        cfg.model.backbone_init = "imagenet"
    return cfg


def _config_change(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two config dicts, but for the category
    lists a detector's training fills in from its data."""
    before, after = flatten_config(saved), flatten_config(now)
    filled = ("model.category_ids", "model.class_names")
    keys = (before.keys() | after.keys()) - set(filled)
    return sorted(k for k in keys if before.get(k) != after.get(k))


def run_one(
    study: Study,
    row: Row,
    seed: int,
    *,
    out: Path,
    steps: int | None,
    data: StudyData,
    overrides: list[str],
    progress: bool,
) -> dict[str, Any]:
    """Train (or resume) and score one run; its record (reused when already written)."""
    from deepmac.data import CocoInstances
    from deepmac.evaluation.evaluate import evaluate_box_prompted
    from deepmac.experiments.training import run_training
    from deepmac.inference.segmenter import BoxPromptedSegmenter

    run_dir = out / f"{row.slug}_s{seed}"
    done = run_dir / "record.json"
    cfg = run_config(row, seed, steps, data, overrides)
    # A finished or half-done run is reused only for the same config: more steps would splice
    # two cosine schedules, other overrides would mix two experiments in one row.
    saved = run_dir / "config.json"
    if saved.is_file():
        changed = _config_change(json.loads(saved.read_text()), cfg.to_dict())
        if changed:
            raise ValueError(
                f"{run_dir} was trained with another config ({', '.join(changed[:4])} differ); "
                f"expected the same --steps and overrides to continue the study, or a new --out"
            )
    if done.is_file():
        return json.loads(done.read_text())
    logger.info("%s: %s seed %d, %d steps -> %s", study.name, row.name, seed, cfg.train.steps,
                run_dir)  # fmt: skip
    start = time.perf_counter()
    resume = (run_dir / "last.pt").is_file()
    summary = run_training(cfg, run_dir, resume=resume, overwrite=not resume, progress=progress)
    wall = time.perf_counter() - start
    val = CocoInstances(Path(data.val), data.val_split, mask_split=cfg.data.mask_split)
    metrics, _ = evaluate_box_prompted(
        BoxPromptedSegmenter.from_checkpoint(run_dir / "last.pt"), val
    )
    record = {
        "table": study.name,
        "row": row.name,
        "seed": seed,
        "commit": git_commit(),
        "steps": summary["step"],
        # This process's time: a resumed run counts only what it trained after resuming.
        "wall_seconds": wall,
        "resumed": resume,
        "overrides": [*row.overrides, *overrides],
        **{key: metrics[key] for key in RECORDED},
    }
    write_json_atomic(done, record)
    return record


def run_study(
    study: Study,
    *,
    seeds: list[int],
    out: str | Path,
    data: StudyData,
    steps: int | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every row with every seed (seed-major: an interrupted study has every row at the first
    seeds), then ``results.json``, ``results.md`` and the plot. Returns the records."""
    from deepmac.data import CocoInstances
    from deepmac.evaluation.evaluate import filled_box_miou

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    val = CocoInstances(Path(data.val), data.val_split)
    filled = filled_box_miou(val)
    baseline = {s: filled[f"mask_iou/{s}/mIoU"] for s in SPLITS}
    records = []
    for seed in seeds:
        for row in study.rows:
            records.append(
                run_one(
                    study,
                    row,
                    seed,
                    out=out,
                    steps=steps,
                    data=data,
                    overrides=overrides or [],
                    progress=progress,
                )
            )
            # After every run: an interrupted study's finished runs are reported already.
            _write_results(study, records, baseline, out)
    return records


def _write_results(
    study: Study, records: list[dict[str, Any]], baseline: dict[str, float], out: Path
) -> None:
    """``results.json``, ``results.md`` and the plot of the records so far."""
    from deepmac.studies.report import plot_study, study_markdown

    write_json_atomic(out / "results.json", {"study": study.name, "filled_box": baseline,
                                             "records": records})  # fmt: skip
    (out / "results.md").write_text(study_markdown(study, records, baseline))
    try:
        plot_study(study, records, baseline, out / f"{study.name}.png")
    except ImportError as err:
        logger.warning("no plot: %s", err)
