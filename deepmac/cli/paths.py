"""Output paths of a command, checked before any work: a wrong ``--out`` must not cost a
whole run's results at the end."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from deepmac.cli.errors import UsageError

__all__ = ["check_output_file", "check_output_folder"]


def _check_creatable(folder: Path, option: str, target: Path) -> None:
    """``folder`` exists as a writable folder, or can be created under one."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"{option} {target}: {existing} is a file; expected a folder (or nothing) there"
        )
    try:
        # A real probe, not os.access: it also sees read-only mounts, and root's limits.
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UsageError(
            f"{option} {target}: cannot write in {existing} ({err.strerror or err}); expected "
            f"a writable folder"
        ) from None


def check_output_file(
    path: str | Path, option: str, inputs: Mapping[str, str | Path] | None = None
) -> Path:
    """``path`` can be written as a file: it is no folder, its folder exists writable or can
    be created, and it is none of the command's ``inputs`` (``{"the --boxes file": path}``):
    a command never replaces what it reads. Returns it as a ``Path``.

    Raises:
        UsageError: naming ``option``, the path, and what is in the way.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; expected a file path")
    for what, source in (inputs or {}).items():
        if source is not None and path.resolve() == Path(source).resolve():
            raise UsageError(f"{option} {path} is {what}; expected a new file for the output")
    _check_creatable(path.parent, option, path)
    return path


def check_output_folder(path: str | Path, option: str) -> Path:
    """``path`` is a writable folder or can be created as one. Returns it as a ``Path``.

    Raises:
        UsageError: naming ``option``, the path, and what is in the way.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; expected a folder")
    _check_creatable(path, option, path)
    return path
