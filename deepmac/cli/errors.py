"""The CLI's error kinds: ``main`` turns them into one ``deepmac COMMAND: error: ...`` line."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """The command line asks for something inconsistent (exit status 2, like argparse's own
    errors); other expected failures exit with 1."""
