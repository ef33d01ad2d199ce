"""The image files of ``--images``: files, folders (``--recursive``: with their subfolders) and
text lists of paths; what counts as an image is read from the headers only."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from deepmac.data.images import image_frames

__all__ = ["IMAGE_SUFFIXES", "LIST_SUFFIXES", "ImageFile", "collect_images"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
#: A file with this suffix given to ``--images`` lists image paths, one a line.
LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True)
class ImageFile:
    """One image: its ``path``, its ``name`` (the POSIX path relative to the folder it was
    found in, or as a list writes it; the base name of a file given by itself), which boxes
    files are matched against and outputs are named by, and its ``(H, W)`` ``displayed``
    (EXIF orientation applied) and ``stored``."""

    path: Path
    name: str
    displayed: tuple[int, int]
    stored: tuple[int, int]


def _list_entries(listing: Path) -> list[tuple[Path, str]]:
    """``(path, name)`` of each line of a list file: relative paths are relative to the list's
    folder; blank lines and ``#`` comments are skipped."""
    entries = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text)
        name = path.name if path.is_absolute() else path.as_posix()
        path = path if path.is_absolute() else listing.parent / path
        if not path.is_file():
            raise FileNotFoundError(
                f"--images {listing} line {number}: expected an image file at {path}, found "
                f"{'a folder' if path.is_dir() else 'nothing'}"
            )
        entries.append((path, name))
    return entries


def collect_images(paths: list[str], *, recursive: bool = False) -> list[ImageFile]:
    """The images of the files, folders and lists given to ``--images``, in that order
    (each folder's sorted).

    A file named on the command line or in a list must be a readable image. In a folder
    (and its subfolders with ``recursive``), the files with an image suffix whose header
    reads are the images; the others with such a suffix (empty or corrupt files, folders
    named ``x.jpg``) are named in one warning and skipped, and files with other suffixes are
    ignored.

    Raises:
        FileNotFoundError: a path that is neither a file nor a folder, or a list line naming
            no file.
        ValueError: an unreadable named file, no image at all, or two images with one name
            (results, prompts and overlays are keyed by it).
    """
    found: list[tuple[Path, str, bool]] = []  # (file, name, named one by one)
    skipped: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            pattern = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(pattern):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((f, f.relative_to(p).as_posix(), False))
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            found += [(f, name, True) for f, name in _list_entries(p)]
        elif p.is_file():
            found.append((p, p.name, True))
        else:
            raise FileNotFoundError(f"--images: {p} is neither a file nor a folder")
    images: list[ImageFile] = []
    by_name: dict[str, Path] = {}
    for f, name, named in found:
        try:
            displayed, stored = image_frames(f)
        except (OSError, ValueError) as err:
            if named:  # asked for by name: an error, not a skip
                raise
            skipped.append(f"{name} ({'a folder' if f.is_dir() else err})")
            continue
        if name in by_name:
            raise ValueError(
                f"--images: two images named {name} ({by_name[name]}, {f}); expected unique "
                f"file names (results, box prompts and overlays go by them)"
            )
        by_name[name] = f
        images.append(ImageFile(f, name, displayed, stored))
    if skipped:
        logger.warning(
            "--images: %d path(s) with an image suffix are not readable images, skipped: %s",
            len(skipped),
            "; ".join(skipped),
        )
    if not images:
        raise ValueError(f"--images {' '.join(paths)}: no readable image files found")
    return images
