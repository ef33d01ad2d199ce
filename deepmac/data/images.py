"""Reading image files: the one reader of the dataset, ``predict``, ``eval`` and the demo.

* Orientation: a file's EXIF orientation (phone photos store the sensor frame and a rotation
  tag) is applied with ``ImageOps.exif_transpose``, so pixels, boxes and masks are in the
  frame every viewer and annotation tool displays. ``read_image(path, frame=(H, W))`` instead
  picks the frame whose size matches (a COCO JSON's width/height): the displayed one when it
  matches, else the stored one.
* Modes: L, LA, P, PA, RGBA, CMYK, YCbCr and 1 convert to RGB with Pillow (alpha is dropped:
  the colour channels as stored, as OpenCV's ``imread`` does). 16-bit greyscale (``I;16*``,
  and ``I``, which Pillow uses for 16-bit files) is scaled from 0..65535 to 0..255; float
  greyscale (``F``) is read as 0..1. Values outside those ranges are refused, never clipped.
* Size: images above ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's decompression-bomb
  limit, 89 million by default; set it to allow larger files) are refused before decoding.

Every failure is a ``ValueError`` (``FileNotFoundError`` for a missing file) naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "check_frame",
    "displayed_size",
    "exif_orientation",
    "image_frames",
    "open_image",
    "read_image",
    "to_rgb",
]

#: EXIF orientations that swap width and height (the transposes and 90-degree rotations).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
#: Modes Pillow converts to RGB by itself without loss of range.
_PLAIN_MODES = ("RGB", "1", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr")


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of ``image`` (1, the identity, when absent or invalid)."""
    value = image.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """``(H, W)`` of ``image`` once its EXIF orientation is applied (header only)."""
    if exif_orientation(image) in _SWAPPING_ORIENTATIONS:
        return image.width, image.height
    return image.height, image.width


def _open(path: Path) -> Image.Image:
    """``Image.open`` (header only) with the size limit checked; errors name ``path``."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: expected a file at {path}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; the check below refuses.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"image file {path}: {str(err).rstrip('.')}; expected at most "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels (raise it to allow "
            f"larger images)"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image file {path}: {err}") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise ValueError(
            f"image file {path} is {image.width}x{image.height} = {image.width * image.height} "
            f"pixels; expected at most PIL.Image.MAX_IMAGE_PIXELS = {limit} (raise it to allow "
            f"larger images)"
        )
    return image


def to_rgb(image: Image.Image, source: str = "image") -> Image.Image:
    """``image`` as an 8-bit RGB image, by the mode rules of this module's docstring.

    Raises:
        ValueError: a mode with no RGB conversion, or 16-bit / float values out of range
            (the message names ``source``, the mode and the range found).
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        # Pillow warns converting a palette with transparency straight to RGB.
        return image.convert("RGBA").convert("RGB")
    if mode in _PLAIN_MODES:
        return image.convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)  # (H, W); I;16B is big-endian: numpy knows
        low, high, expected = 0, 65535, "0..65535 (16-bit)"
        scale = 255.0 / 65535.0
    elif mode == "F":
        values = np.asarray(image).astype(np.float64)  # (H, W)
        low, high, expected = 0.0, 1.0, "0..1 (float)"
        scale = 255.0
    else:
        raise ValueError(
            f"{source} has image mode {mode!r}; expected one of {', '.join(_PLAIN_MODES)}, "
            f"I;16, I or F (convert it to RGB first)"
        )
    found_low, found_high = (float(values.min()), float(values.max())) if values.size else (0, 0)
    if not np.isfinite(values).all() or found_low < low or found_high > high:
        raise ValueError(
            f"{source} has mode {mode!r} values in {found_low:g}..{found_high:g}; expected "
            f"{expected} (convert it to 8-bit RGB first)"
        )
    grey = np.rint(values * scale).astype(np.uint8)  # (H, W)
    return Image.fromarray(grey).convert("RGB")


def check_frame(
    frame: tuple[int, int],
    displayed: tuple[int, int],
    stored: tuple[int, int],
    path: str | Path,
    source: str = "",
) -> None:
    """``frame`` (``(H, W)`` from ``source``, e.g. an annotation file) is the displayed or the
    stored size of the image file ``path``.

    Raises:
        ValueError: it is neither; the message names both sizes and ``source``.
    """
    if tuple(frame) in (tuple(displayed), tuple(stored)):
        return
    also = "" if displayed == stored else f" as displayed, {stored[0]}x{stored[1]} as stored"
    raise ValueError(
        f"image file {path} is {displayed[0]}x{displayed[1]} (HxW){also} but "
        f"{source or 'the caller'} says {frame[0]}x{frame[1]}"
    )


def _load(path: Path, frame: tuple[int, int] | None, source: str) -> Image.Image:
    """The decoded RGB image of ``path`` in the frame ``read_image`` documents."""
    image = _open(path)
    try:
        image.load()  # first: a PNG's EXIF may follow its pixel data; truncation shows here
        displayed = displayed_size(image)
        if frame is not None:
            check_frame(frame, displayed, (image.height, image.width), path, source)
        if frame is None or tuple(frame) == displayed:
            ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image, source=f"image file {path}")
    except OSError as err:
        image.close()
        raise ValueError(f"cannot decode image file {path}: {err}") from None
    except BaseException:
        image.close()
        raise


def image_frames(path: str | Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(H, W)`` of an image file as displayed (EXIF orientation applied) and as stored,
    from its header.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable image header, or over the size limit.
    """
    with _open(Path(path)) as image:
        stored = (image.height, image.width)
        if image.format == "PNG" and "exif" not in image.info:
            # Pillow decodes a PNG to look for an eXIf chunk after the pixel data (rare);
            # a header read does not.
            return stored, stored
        return displayed_size(image), stored


def open_image(path: str | Path) -> Image.Image:
    """An image file as an 8-bit RGB PIL image in its displayed (EXIF) orientation.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: undecodable, too large, or of an unsupported mode / value range.
    """
    return _load(Path(path), None, "")


def read_image(
    path: str | Path, *, frame: tuple[int, int] | None = None, source: str = ""
) -> np.ndarray:
    """An image file as a ``(H, W, 3)`` uint8 RGB array.

    Args:
        path: the file.
        frame: ``(H, W)`` the caller's annotations assume, or None for the displayed frame.
            The displayed (EXIF-transposed) image is returned when its size is ``frame``
            (also when both frames are, as for a 180-degree rotation), the stored one when
            only that is ``frame``; any other size is an error.
        source: what says ``frame`` (e.g. the annotation file), for the mismatch error.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: undecodable, too large, unsupported mode, or neither frame is ``frame``.
    """
    return np.array(_load(Path(path), frame, source))  # a writable copy torch can wrap
