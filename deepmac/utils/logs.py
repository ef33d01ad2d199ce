"""The log line format of every deepmac process (the command line, a study's job processes,
the training ranks), so that their lines read alike in one log."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%H:%M:%S"


def configure_process_logging(level: int) -> None:
    """The root logger of this process at ``level`` with the deepmac format (an entry point's
    call: library modules never configure logging)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT)
