"""Progress of long loops (training, evaluation, prediction over a folder): a tqdm bar on a
terminal, plain periodic log lines elsewhere.

A carriage-return bar written into a log file is one unreadable line that grows; a hidden bar
leaves a log file without the loss. So when stderr is not a terminal (``2> train.log``, a batch
job, CI), each loop logs an INFO line instead: training at every logging window
(``train.log_every``), other loops every ``every_s`` seconds::

    step 40/3000 loss 0.4121 lr 1.0e-04 6.3 img/s ETA 1:02:41
    eval: 64/500 images (13%), 4.1 img/s, ETA 1:46
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from tqdm.auto import tqdm

__all__ = ["TrainProgress", "format_eta", "progress_bar", "stderr_is_terminal"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def stderr_is_terminal() -> bool:
    """Whether stderr, where tqdm draws, is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour) of a non-negative number of seconds."""
    whole = max(int(round(seconds)), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_bar(
    items: Iterable[T],
    *,
    desc: str,
    enabled: bool = True,
    unit: str = "it",
    every_s: float = 30.0,
) -> Iterator[T]:
    """Iterate ``items``, showing progress: a tqdm bar on a terminal, else one INFO line every
    ``every_s`` seconds and one at the end. Nothing when not ``enabled``."""
    total = len(items) if isinstance(items, Sized) else None
    if not enabled:
        yield from items
        return
    if stderr_is_terminal():
        yield from tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)
        return
    start = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every_s or done == total:
            last = now
            logger.info("%s", _plain_line(desc, done, total, unit, now - start))


def _plain_line(desc: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
    """``eval: 64/500 img (13%), 4.1 img/s, ETA 1:46``."""
    rate = done / max(elapsed, 1e-9)
    if total is None:
        return f"{desc}: {done} {unit}, {rate:.1f} {unit}/s"
    eta = format_eta((total - done) / max(rate, 1e-9))
    share = 100 * done / max(total, 1)
    return f"{desc}: {done}/{total} {unit} ({share:.0f}%), {rate:.1f} {unit}/s, ETA {eta}"


class TrainProgress:
    """Progress of the training loop from ``initial`` to ``total`` steps.

    On a terminal a tqdm bar shows the latest loss and images/s; elsewhere ``log`` writes one
    INFO line per logging window (step, loss, lr, images/s, ETA), so a log file holds the
    loss curve. Disabled (``enabled=False``, ranks > 0) it shows nothing.
    """

    def __init__(self, *, total: int, initial: int, enabled: bool) -> None:
        self.total = total
        self.initial = initial
        self.start = time.perf_counter()
        self.lines = enabled and not stderr_is_terminal()
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled or self.lines,
            dynamic_ncols=True,
            desc="train",
        )

    def update(self) -> None:
        """One optimizer step done."""
        self.bar.update(1)

    def log(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        """The end of a logging window at ``step``: its mean ``loss``, the ``lr`` and speed."""
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}")
        if not self.lines:
            return
        per_step = (time.perf_counter() - self.start) / max(step - self.initial, 1)
        logger.info(
            "step %d/%d loss %.4f lr %.1e %.1f img/s ETA %s",
            step,
            self.total,
            loss,
            lr,
            images_per_s,
            format_eta(per_step * (self.total - step)),
        )

    def close(self) -> None:
        self.bar.close()
