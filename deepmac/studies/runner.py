"""Run a study: every row with every seed, each run trained, scored and recorded once.

``OUT/<row>_s<seed>/`` is a training run folder plus ``record.json`` once it is scored; a
study started again reuses the records and resumes unfinished runs from their ``last.pt``,
so an interrupted study continues where it stopped. ``OUT/results.json`` holds every record
found under ``OUT`` (also those of other invocations: other seeds, other ``rows``),
``OUT/results.md`` the mean +- std table beside the paper, ``OUT/STUDY.png`` the bars.

``jobs > 1`` trains that many runs at once, each in its own process on an equal share of the
CPU cores: on 2 cores two one-thread runs gave 1.27x the images/s of one two-thread run (5.11
against 4.02, box_prompted_cpu, 2026-12-02), since much of a step (Python, small ops, the
optimizer) does not spread over threads.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepmac.config import ExperimentConfig, apply_overrides, config_from_dict, flatten_config
from deepmac.studies.tables import SPLITS, Row, Study
from deepmac.utils.io import atomic_write, write_json_atomic
from deepmac.utils.logs import configure_process_logging

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


#: Config keys that act only after the last training step: a run whose config differs in
#: these alone is the same training, finished again (its checkpoint post-processed and
#: scored anew) instead of refused.
AFTER_TRAINING = ("train.precise_bn_batches",)


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/config.json`` read through the schema, so that keys added to the config
    since the run was trained take their defaults (which keep the old behaviour); ``None``
    without the file."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    return config_from_dict(json.loads(path.read_text())).to_dict()


def _config_change(
    saved: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """The dotted keys whose values differ between two config dicts, but for ``ignore`` and
    the category lists a detector's training fills in from its data."""
    before, after = flatten_config(saved), flatten_config(now)
    filled = ("model.category_ids", "model.class_names", *ignore)
    keys = (before.keys() | after.keys()) - set(filled)
    return sorted(k for k in keys if before.get(k) != after.get(k))


def check_same_config(run_dir: Path, cfg: ExperimentConfig) -> dict[str, Any] | None:
    """The run's saved config (``saved_config``); raises ``ValueError`` when ``run_dir``
    holds a run of another config: a finished or half-done run is reused only for the same
    config (more steps would splice two cosine schedules, other overrides would mix two
    experiments in one row)."""
    saved = saved_config(run_dir)
    if saved is not None:
        changed = _config_change(saved, cfg.to_dict(), ignore=AFTER_TRAINING)
        if changed:
            raise ValueError(
                f"{run_dir} was trained with another config ({', '.join(changed[:4])} differ); "
                f"expected the same --steps and overrides to continue the study, or a new --out"
            )
    return saved


def find_same_run(cfg: ExperimentConfig, folders: list[Path]) -> Path | None:
    """A scored run folder in one of the study ``folders`` trained with ``cfg`` but for its
    name (e.g. table4's Hourglass-20 for table5's, or for scaling's 100% row); ``None``."""
    for folder in folders:
        for record in sorted(Path(folder).glob("*/record.json")):
            saved = saved_config(record.parent)
            if saved is not None and not _config_change(saved, cfg.to_dict(), ignore=("name",)):
                return record.parent
    return None


def _reuse_run(
    study: Study, row: Row, cfg: ExperimentConfig, run_dir: Path, same: Path, overrides: list[str]
) -> dict:
    """The record of ``same`` (another study's run of ``cfg``) as this row's, written with
    the config into ``run_dir`` (no checkpoint: it stays in ``same``)."""
    record = json.loads((same / "record.json").read_text())
    record.update(table=study.name, row=row.name, overrides=[*row.overrides, *overrides],
                  reused_from=str(same))  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg.to_dict())
    write_json_atomic(run_dir / "record.json", record)
    logger.info("%s: %s seed %d reuses the same run %s", study.name, row.name, cfg.train.seed,
                same)  # fmt: skip
    return record


def restore_records(
    study: Study,
    files: list[Path],
    *,
    out: Path,
    steps: int | None,
    data: StudyData,
    overrides: list[str],
) -> int:
    """Write the records of an earlier machine's study (its ``results.json``, e.g. the one
    committed under docs/results/) into ``out`` as scored runs, with the config each was
    trained with, so that a study continued on a fresh machine trains only the runs they
    lack. A record is restored when its row is one of ``study``'s and its steps and overrides
    are this call's (the row's, then the command line's); one whose run folder is already in
    ``out`` is left alone. Returns how many were restored."""
    restored = 0
    rows = {row.name: row for row in study.rows}
    for file in files:
        try:
            earlier = json.loads(Path(file).read_text())["records"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"--records {file}: expected a study's results.json with a 'records' list ({err})"
            ) from None
        for record in earlier:
            row = rows.get(record.get("row"))
            if row is None or record.get("table") not in (study.name, None):
                continue
            cfg = run_config(row, record["seed"], steps, data, overrides)
            run_dir = out / f"{row.slug}_s{record['seed']}"
            same = (record.get("steps") == cfg.train.steps
                    and record.get("overrides") == [*row.overrides, *overrides])  # fmt: skip
            if not same or run_dir.exists():
                continue
            run_dir.mkdir(parents=True)
            write_json_atomic(run_dir / "config.json", cfg.to_dict())
            write_json_atomic(run_dir / "record.json", {**record, "restored_from": str(file)})
            restored += 1
    logger.info("%s: %d runs restored from %s", study.name, restored,
                ", ".join(str(f) for f in files))  # fmt: skip
    return restored


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
    reuse: list[Path] | None = None,
) -> dict[str, Any]:
    """Train (or resume) and score one run; its record (reused when already written, or
    copied from a run of the same config in one of the ``reuse`` study folders)."""
    from deepmac.experiments.training import run_training

    run_dir = out / f"{row.slug}_s{seed}"
    done = run_dir / "record.json"
    cfg = run_config(row, seed, steps, data, overrides)
    saved = check_same_config(run_dir, cfg)
    earlier = json.loads(done.read_text()) if done.is_file() else None
    if earlier is not None:
        if not _config_change(saved or {}, cfg.to_dict()):
            return earlier
        logger.info("%s: %s seed %d: finished again for %s", study.name, row.name, seed,
                    ", ".join(AFTER_TRAINING))  # fmt: skip
        if "reused_from" in earlier:  # no checkpoint here: reused or trained anew below
            earlier = None
    same = find_same_run(cfg, reuse or []) if not (run_dir / "last.pt").is_file() else None
    if same is not None:
        return _reuse_run(study, row, cfg, run_dir, same, overrides)
    logger.info("%s: %s seed %d, %d steps -> %s", study.name, row.name, seed, cfg.train.steps,
                run_dir)  # fmt: skip
    start = time.perf_counter()
    resume = (run_dir / "last.pt").is_file()
    summary = run_training(cfg, run_dir, resume=resume, overwrite=not resume, progress=progress)
    # This process's time, plus the earlier training's for a run finished again.
    wall = time.perf_counter() - start + (earlier or {}).get("wall_seconds", 0.0)
    metrics, device = _score(run_dir / "last.pt", cfg, data)
    earlier = earlier or {}
    record = {
        "table": study.name,
        "row": row.name,
        "seed": seed,
        "commit": git_commit(),
        # the code that trained it: an earlier commit for a run finished again
        "trained_commit": earlier.get("trained_commit") or earlier.get("commit") or git_commit(),
        "steps": summary["step"],
        # A resumed run counts only what it trained after resuming.
        "wall_seconds": wall,
        "resumed": earlier.get("resumed", resume),
        "device": device,
        # float32 where the CPU has no kernels of the amp dtype (deepmac.engine.precision)
        "amp": _amp_run(cfg.train.amp, device),
        "overrides": [*row.overrides, *overrides],
        **{key: metrics[key] for key in RECORDED},
    }
    write_json_atomic(done, record)
    return record


def _score(checkpoint: Path, cfg: ExperimentConfig, data: StudyData) -> tuple[dict, str]:
    """``(metrics, device type)`` of the checkpoint on the evaluation split, from ground-truth
    boxes, in float32 on the device it trained on (a GPU study scores on the GPU)."""
    from deepmac.data import CocoInstances
    from deepmac.engine.devices import resolve_device
    from deepmac.evaluation.evaluate import evaluate_box_prompted
    from deepmac.inference.segmenter import BoxPromptedSegmenter

    val = CocoInstances(Path(data.val), data.val_split, mask_split=cfg.data.mask_split)
    device = resolve_device(cfg.train.device)
    segmenter = BoxPromptedSegmenter.from_checkpoint(checkpoint, device=device)
    metrics, _ = evaluate_box_prompted(segmenter, val)
    return metrics, device.type


def _amp_run(amp: str, device: str) -> str:
    """The ``train.amp`` name the run trained with on ``device``'s type."""
    from deepmac.engine.precision import AMP_DTYPES, amp_dtype, run_dtype

    ran = run_dtype(amp_dtype(amp), device)
    return next(name for name, dtype in AMP_DTYPES.items() if dtype == ran)


def select_rows(study: Study, names: list[str] | None) -> list[Row]:
    """The rows named (by label or run-folder slug), in the study's order; every row for
    ``None``. Raises ``ValueError`` naming the rows there are for an unknown name."""
    if not names:
        return list(study.rows)
    known = {key: row for row in study.rows for key in (row.name, row.slug)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"{study.name} has no row {unknown[0]!r}; expected one of "
            f"{', '.join(row.slug for row in study.rows)}"
        )
    chosen = {known[n].name for n in names}
    return [row for row in study.rows if row.name in chosen]


def _threads_per_job(jobs: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // jobs)


def _start_job_process(threads: int, level: int) -> None:
    """A job process: its share of the cores, and the parent's log level (spawned processes
    start with logging unconfigured)."""
    import torch

    torch.set_num_threads(threads)
    configure_process_logging(level)


def run_study(
    study: Study,
    *,
    seeds: list[int],
    out: str | Path,
    data: StudyData,
    steps: int | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    rows: list[str] | None = None,
    jobs: int = 1,
    reuse: list[str | Path] | None = None,
    restore_from: list[str | Path] | None = None,
    report_only: bool = False,
) -> list[dict[str, Any]]:
    """Every row (or the ``rows`` named) with every seed, seed-major (an interrupted study has
    every row at the first seeds), ``jobs`` runs at a time; after every run ``results.json``,
    ``results.md`` and the plot of all the records under ``out``. Returns this call's records,
    in seed-major order. A run folder of another config stops the study before any training.
    A run whose config (but for its name) was trained in one of the ``reuse`` study folders
    takes that run's record instead of training again; the ``restore_from`` files
    (``results.json`` of this study run elsewhere) are restored first (``restore_records``).
    ``report_only``: no training, the report of the runs already scored (and those of them
    among this call's runs returned)."""
    out = Path(out)
    overrides = overrides or []
    reuse_folders = [Path(folder) for folder in reuse or []]
    runs = [(row, seed) for seed in seeds for row in select_rows(study, rows)]
    _check_before_training(runs, out, reuse_folders, steps, data, overrides)
    out.mkdir(parents=True, exist_ok=True)
    if restore_from:
        restore_records(study, [Path(f) for f in restore_from], out=out, steps=steps,
                        data=data, overrides=overrides)  # fmt: skip
    # The report keeps the folder's runs of this call's configs (any seed), so that runs of
    # other --steps or overrides left in the folder are not averaged in.
    expected = {row.name: run_config(row, 0, steps, data, overrides) for row in study.rows}
    _, others = collect_records(study, out, expected)
    if others:
        logger.warning("%s: left out of the report, trained with another config: %s",
                       study.name, ", ".join(str(p) for p in others))  # fmt: skip
    baseline = _filled_box_baseline(data)
    settings = dict(out=out, steps=steps, data=data, overrides=overrides, reuse=reuse_folders)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    jobs = min(jobs, len(runs))
    if report_only:
        found, _ = collect_records(study, out, expected)
        if not found:
            raise ValueError(
                f"--report-only: expected scored runs of {study.name}'s rows under {out}, found "
                f"none (with these --steps and overrides); train them, or bring them with "
                f"--records / --reuse"
            )
        _write_results(study, baseline, out, expected)
        return [r for r in found if (r["row"], r["seed"]) in {(w.name, s) for w, s in runs}]
    if jobs <= 1:
        for row, seed in runs:
            records[row.name, seed] = run_one(study, row, seed, progress=progress, **settings)
            # After every run: an interrupted study's finished runs are reported already.
            _write_results(study, baseline, out, expected)
    else:
        for key, record in _run_in_parallel(study, runs, jobs, settings):
            records[key] = record
            _write_results(study, baseline, out, expected)
    return [records[row.name, seed] for row, seed in runs]


def _filled_box_baseline(data: StudyData) -> dict[str, float]:
    """The filled box's mIoU per split on the study's evaluation split."""
    from deepmac.data import CocoInstances
    from deepmac.evaluation.evaluate import filled_box_miou

    filled = filled_box_miou(CocoInstances(Path(data.val), data.val_split))
    return {s: filled[f"mask_iou/{s}/mIoU"] for s in SPLITS}


def _check_before_training(
    runs: list[tuple[Row, int]],
    out: Path,
    reuse: list[Path],
    steps: int | None,
    data: StudyData,
    overrides: list[str],
) -> None:
    """Refuse a missing ``reuse`` folder and a run folder of another config, before any run
    trains."""
    for folder in reuse:
        if not folder.is_dir():
            raise FileNotFoundError(f"reuse: {folder} is not a folder; expected a study's --out")
    for row, seed in runs:
        cfg = run_config(row, seed, steps, data, overrides)
        check_same_config(out / f"{row.slug}_s{seed}", cfg)


def _run_in_parallel(
    study: Study, runs: list[tuple[Row, int]], jobs: int, settings: dict[str, Any]
) -> Iterator[tuple[tuple[str, int], dict[str, Any]]]:
    """``run_one`` of every ``(row, seed)`` in ``jobs`` spawned processes; yields
    ``((row name, seed), record)`` as runs finish. A failed run, or any other error here
    (Ctrl-C included), cancels the runs not started yet and raises at once; the runs already
    training are left to end with their processes (their checkpoints resume them)."""
    import multiprocessing

    # spawn, not fork: a forked child would share the parent's OpenMP thread pool state.
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_job_process,
        initargs=(_threads_per_job(jobs), logging.getLogger("deepmac").getEffectiveLevel()),
    ) as pool:
        pending: dict[Future, tuple[str, int]] = {
            # no progress bars: the jobs' lines would interleave
            pool.submit(run_one, study, row, seed, progress=False, **settings): (row.name, seed)
            for row, seed in runs
        }
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield pending.pop(future), future.result()  # a run's error raises here
        except BaseException:
            # Without this the pool's exit would wait for every queued run to train.
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def collect_records(
    study: Study, out: Path, expected: dict[str, ExperimentConfig] | None = None
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Every scored run of ``study`` under ``out``, seed-major in the study's row order, and
    the run folders left out: with ``expected`` (row label -> config), those whose config
    differs from their row's but for the seed."""
    found, others = [], []
    for order, row in enumerate(study.rows):
        for path in out.glob(f"{row.slug}_s*/record.json"):
            record = json.loads(path.read_text())
            if record.get("row") != row.name:
                continue
            if expected is not None:
                saved = saved_config(path.parent)
                now = expected[row.name].to_dict()
                if saved is None or _config_change(saved, now, ignore=("train.seed",)):
                    others.append(path.parent)
                    continue
            found.append((record["seed"], order, record))
    return [record for _, _, record in sorted(found, key=lambda item: item[:2])], others


def _write_results(
    study: Study, baseline: dict[str, float], out: Path, expected: dict[str, ExperimentConfig]
) -> None:
    """``results.json``, ``results.md`` and the plot of the records under ``out`` so far
    (those of the ``expected`` configs)."""
    from deepmac.studies.report import plot_study, study_markdown

    records, _ = collect_records(study, out, expected)
    write_json_atomic(out / "results.json", {"study": study.name, "filled_box": baseline,
                                             "records": records})  # fmt: skip
    table = study_markdown(study, records, baseline).encode("utf-8")
    atomic_write(out / "results.md", lambda f: f.write(table))
    try:
        plot_study(study, records, baseline, out / f"{study.name}.png")
    except ImportError as err:
        logger.warning("no plot: %s", err)
