"""The image frame every predictor and the ONNX runtime work in: the image resized so its long
side is the model's input side and zero-padded to a square (``ResizePad``, as in training), the
map of boxes into that frame and back, and the paste of box-relative masks into the image.

    frame = ImageFrame.of(image, input_size=384, device=model_device)
    features = model.prompt_features(frame.input[None])
    logits = model.mask_branch(features, frame.to_input(boxes), None)
    masks = frame.paste(logits.sigmoid()[:, 0], boxes, model.mask_branch.paste, 0.5)

Images are checked here (``image_to_tensor``) and box prompts too (``check_prompt_boxes``):
once, at the boundary.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deepmac.data.images import exif_orientation, to_rgb
from deepmac.data.transforms import ResizePad
from deepmac.structures.boxes import box_xywh_to_xyxy, boxes_inside

#: Box layouts the predictors take: corners, or COCO's corner and size.
BOX_FORMATS = ("xyxy", "xywh")
#: Upper bound on the soft pasted probabilities ``ImageFrame.paste_with_scores`` holds at once
#: (128 MB).
MAX_PASTED_FLOATS = 32 * 1024 * 1024

#: ``(probs (N, S, S), boxes (N, 4) image pixels, (H, W), threshold or None) -> (N, H, W)``:
#: a mask branch's ``paste`` convention.
Paste = Callable[[Tensor, Tensor, tuple[int, int], float | None], Tensor]


def _check_pixel_range(pixels: Tensor, dtype: object) -> None:
    """Refuse values that are not 0..255 RGB, above all 0..1-scaled floats: read as 0..255
    they are a near-black image, and the masks would follow the boxes alone."""
    if pixels.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(pixels.float()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"image ({dtype}) has non-finite values; expected RGB in 0..255")
    if pixels.is_floating_point() and 0.0 < high <= 1.0 and low >= 0.0:
        raise ValueError(
            f"image ({dtype}) has values in {low:g}..{high:g}, which looks like a 0..1-scaled "
            f"image; expected RGB in 0..255 (multiply by 255, or pass uint8)"
        )
    if low < 0.0 or high > 255.0:
        raise ValueError(
            f"image ({dtype}) has values in {low:g}..{high:g}; expected RGB in 0..255 "
            f"(not normalised pixels; 16-bit data scaled to 8 bits)"
        )


def image_to_tensor(image: Image.Image | np.ndarray | Tensor) -> Tensor:
    """A PIL image, ``(H, W, 3)`` / ``(H, W)`` array or ``(3, H, W)`` tensor to float
    ``(3, H, W)`` RGB in 0..255, on the device of a tensor input.

    * PIL images are converted by mode as ``deepmac.data.images.to_rgb`` (16-bit scaled to 8
      bits, alpha dropped) and used in their own pixel frame. An image that still carries an
      EXIF orientation (``Image.open`` of a phone photo) is warned about: boxes drawn on the
      displayed photo are in the other frame; open it with ``deepmac.data.images.open_image``
      (or ``ImageOps.exif_transpose``) first.
    * Arrays and tensors hold RGB values in 0..255, of any integer or float dtype. Refused, as
      they would give wrong masks silently: non-finite values, values outside 0..255, and
      floats in 0..1 (a maximum in (0, 1]): those are 0..1-scaled images; multiply by 255.

    Raises:
        ValueError: a shape, mode or value range other than the above (named in the message).
        TypeError: not a PIL image, array or tensor.
    """
    if isinstance(image, Image.Image):
        orientation = exif_orientation(image)
        if orientation != 1:
            warnings.warn(
                f"the PIL image has EXIF orientation {orientation}: its pixels are used as "
                f"stored, not as displayed; open it with deepmac.data.images.open_image (or "
                f"apply ImageOps.exif_transpose) if the boxes were drawn on the displayed image",
                stacklevel=3,
            )
        image = np.array(to_rgb(image))  # a writable copy: torch wraps it without copying
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image array must be (H, W, 3) RGB, got shape {image.shape}")
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
        pixels = image
    else:
        raise TypeError(
            f"image must be a PIL image, numpy array or tensor, got {type(image).__name__}"
        )
    if pixels.dtype != torch.uint8:
        _check_pixel_range(pixels, image.dtype)
    return pixels.float()


def check_prompt_boxes(
    boxes: Tensor | np.ndarray | list,
    image_size: tuple[int, int],
    box_format: str = "xyxy",
) -> Tensor:
    """Validate box prompts given to the API and clip them to the image: the one check they
    pass, at the boundary; nothing downstream validates or clips them again.

    ``boxes`` is ``(N, 4)``, one box ``(4,)``, or empty (``[]``, ``(0, 4)``), as a tensor,
    array or nested list, in ``box_format`` (``"xyxy"`` corners, or COCO ``"xywh"``). Boxes
    that stick out of the image are clipped (documented behaviour); a box with no area left
    inside the image, or with a NaN or infinite coordinate, is an error naming its index (a
    caller's mistake; a boxes file's empty boxes are skipped instead, with a warning:
    ``deepmac.inference.prompts.BoxPrompt.valid``, through ``boxes_inside`` as here).

    Returns:
        ``(N, 4)`` float32 clipped xyxy boxes on the CPU (where the checks and their error
        message read them).
    """
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {', '.join(BOX_FORMATS)}, got {box_format!r}")
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device="cpu")
    if boxes.dim() == 1 and boxes.numel() in (0, 4):  # one box, or [] for none
        boxes = boxes.reshape(-1, 4)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"boxes must be (N, 4) or (4,) {box_format}, got shape {tuple(boxes.shape)}"
        )
    if box_format == "xywh":
        boxes = box_xywh_to_xyxy(boxes)
    nonfinite = ~torch.isfinite(boxes).all(dim=1)
    if nonfinite.any():
        # Clipping would turn inf into the image edge and NaN into nothing: refused instead.
        index = torch.nonzero(nonfinite)[:5, 0].tolist()
        raise ValueError(
            f"{int(nonfinite.sum())} box(es) have non-finite coordinates (indices {index}, "
            f"first {boxes[index[0]].tolist()}); expected finite xyxy pixels"
        )
    clipped, keep = boxes_inside(boxes, image_size)
    if not keep.all():
        index = torch.nonzero(~keep)[:5, 0].tolist()
        raise ValueError(
            f"{int((~keep).sum())} box(es) have no area inside the {image_size[1]}x"
            f"{image_size[0]} image (indices {index}, first {boxes[index[0]].tolist()}); "
            f"expected x1 < x2, y1 < y2 overlapping the image"
        )
    return clipped


@dataclass
class ImageFrame:
    """One image as the network sees it.

    Attributes:
        input: ``(3, S, S)`` float RGB 0..255, resized (long side ``S``) and padded.
        image_size: ``(H, W)`` of the original image.
        content_size: ``(h, w)`` of the resized image inside the padding.
        scale: ``(4,)`` factors from original to input pixels (x, y, x, y).
        unscale: ``(4,)`` factors back (``old / new`` per axis, not ``1 / scale``).
    """

    input: Tensor
    image_size: tuple[int, int]
    content_size: tuple[int, int]
    scale: Tensor
    unscale: Tensor

    @classmethod
    def of(
        cls, image: Image.Image | np.ndarray | Tensor, *, input_size: int, device=None
    ) -> ImageFrame:
        """Check ``image`` (``image_to_tensor``) and resize-pad it on ``device`` (moved before
        the resize, so that a GPU does the resize too)."""
        pixels = image_to_tensor(image).to(device)
        height, width = pixels.shape[-2:]
        resized, target = ResizePad(input_size)(pixels, {})
        new_h, new_w = target["size"]
        scale = torch.tensor([new_w / width, new_h / height] * 2, device=pixels.device)
        unscale = torch.tensor([width / new_w, height / new_h] * 2, device=pixels.device)
        return cls(resized, (int(height), int(width)), (int(new_h), int(new_w)), scale, unscale)

    def to_input(self, boxes: Tensor) -> Tensor:
        """``(N, 4)`` xyxy boxes of the original image in input pixels."""
        return boxes.to(self.scale.device) * self.scale

    def to_image(self, boxes: Tensor) -> Tensor:
        """``(N, 4)`` xyxy boxes of the input frame in original pixels."""
        return boxes.float() * self.unscale.to(boxes.device)

    def paste(self, probs: Tensor, boxes: Tensor, paste: Paste, threshold: float | None) -> Tensor:
        """``(N, H, W)`` masks of ``(N, S, S)`` box-relative probabilities at ``(N, 4)`` boxes
        of the original image, with the branch's ``paste`` convention (bool masks, or soft
        values for ``threshold=None``; the convention bounds its own memory per chunk)."""
        return paste(probs, boxes, self.image_size, threshold)

    def paste_with_scores(
        self, probs: Tensor, boxes: Tensor, paste: Paste, threshold: float
    ) -> tuple[Tensor, Tensor]:
        """``(N, H, W)`` bool masks as ``paste`` and ``(N,)`` scores: the mean pasted
        probability over each mask's pixels (0 for an empty mask)."""
        height, width = self.image_size
        masks = torch.zeros(len(boxes), height, width, dtype=torch.bool, device=probs.device)
        scores = torch.zeros(len(boxes), device=probs.device)
        chunk = max(1, MAX_PASTED_FLOATS // max(1, height * width))
        for start in range(0, len(boxes), chunk):
            part = slice(start, start + chunk)
            # The bool masks come from the paste's own threshold rule, the scores from its
            # soft values.
            soft = paste(probs[part], boxes[part], self.image_size, None)  # (n, H, W)
            hard = paste(probs[part], boxes[part], self.image_size, threshold)
            area = hard.sum(dim=(1, 2))
            scores[part] = (soft * hard).sum(dim=(1, 2)) / area.clamp(min=1)
            masks[part] = hard
        return masks, scores
