"""The image files of ``--images``: what counts as an image, read from the headers only."""

from __future__ import annotations

import logging
from pathlib import Path

from deepmac.data.images import image_frames

__all__ = ["IMAGE_SUFFIXES", "collect_images"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


Frames = tuple[tuple[int, int], tuple[int, int]]


def collect_images(paths: list[str]) -> dict[Path, Frames]:
    """Image file -> ``(H, W)`` as displayed and as stored (``image_frames``), for the files
    and folders given to ``--images``.

    A file named on the command line must be a readable image. In a folder, the files with
    an image suffix whose header reads are the images; the others with such a suffix (empty
    or corrupt files, folders named ``x.jpg``) are named in one warning and skipped, and
    files with other suffixes are ignored.

    Raises:
        FileNotFoundError: a path that is neither a file nor a folder.
        ValueError: an unreadable named file, no image at all, or two images with one base
            name (results, prompts and overlays are keyed by it).
    """
    sizes: dict[Path, Frames] = {}
    skipped: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    sizes[f] = image_frames(f)
                except (OSError, ValueError) as err:
                    skipped.append(f"{f.name} ({'a folder' if f.is_dir() else err})")
        elif p.is_file():
            sizes[p] = image_frames(p)
        else:
            raise FileNotFoundError(f"--images: {p} is neither a file nor a folder")
    if skipped:
        logger.warning(
            "--images: %d path(s) with an image suffix are not readable images, skipped: %s",
            len(skipped),
            "; ".join(skipped),
        )
    if not sizes:
        raise ValueError(f"--images {' '.join(paths)}: no readable image files found")
    by_name: dict[str, Path] = {}
    for path in sizes:
        if path.name in by_name:
            raise ValueError(
                f"--images: two images named {path.name} ({by_name[path.name]}, {path}); "
                f"expected unique file names (results, box prompts and overlays go by them)"
            )
        by_name[path.name] = path
    return sizes
