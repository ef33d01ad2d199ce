"""Training curves of a run (``deepmac plot RUN_DIR``): losses, learning rate and evaluation
metrics from its ``metrics.jsonl``, drawn with matplotlib (the optional ``plot`` extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deepmac.engine.metrics import read_metrics


def _series(records: list[dict[str, Any]], kind: str) -> dict[str, tuple[list, list]]:
    """``{metric: (steps, values)}`` of the numeric fields of the ``kind`` records."""
    series: dict[str, tuple[list, list]] = {}
    for record in records:
        if record.get("type") != kind:
            continue
        for key, value in record.items():
            if key in ("type", "step", "epoch") or not isinstance(value, int | float):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(record["step"])
            values.append(value)
    return series


def plot_training_curves(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw the run's curves to ``out`` (default ``RUN_DIR/curves.png``): one panel of the
    losses (log scale), one of the learning rate, and one of the evaluation mIoU / AP when the
    run evaluated (``train.eval_every``).

    Raises:
        FileNotFoundError: ``run_dir`` has no ``metrics.jsonl``.
        ValueError: it holds no training record yet.
        ImportError: matplotlib is not installed (``pip install 'deepmac[plot]'``).
    """
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no metrics.jsonl; expected the folder of a deepmac train run"
        )
    records = read_metrics(metrics_file)
    train = _series(records, "train")
    if "loss" not in train:
        raise ValueError(f"{metrics_file} holds no training record yet (type 'train' with a loss)")
    try:
        # The object API draws off-screen without switching the process's pyplot backend.
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("deepmac plot needs matplotlib: pip install 'deepmac[plot]'") from None

    evals = {k: v for k, v in _series(records, "eval").items() if "mIoU" in k or "AP" in k}
    panels = 3 if evals else 2
    fig = Figure(figsize=(5 * panels, 3.6), layout="constrained")
    axes = fig.subplots(1, panels)
    losses = axes[0]
    for name, (steps, values) in train.items():
        if name.startswith("loss"):
            losses.plot(steps, values, label=name, linewidth=1.5 if name == "loss" else 1.0)
    losses.set_yscale("log")
    losses.set(title="training losses", xlabel="step")
    losses.legend(fontsize=8)
    steps, values = train["lr"] if "lr" in train else ([], [])
    axes[1].plot(steps, values)
    axes[1].set(title="learning rate", xlabel="step")
    if evals:
        for name, (steps, values) in sorted(evals.items()):
            axes[2].plot(steps, values, marker="o", markersize=3, label=name)
        axes[2].set(title="evaluation", xlabel="step")
        axes[2].legend(fontsize=7)
    for axis in axes:
        axis.grid(alpha=0.3)
    fig.suptitle(f"{run_dir.name}: {metrics_file}", fontsize=9)
    out = Path(out) if out is not None else run_dir / "curves.png"
    from deepmac.utils.io import atomic_write

    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))
    return out
