"""``BoxPromptedSegmenter``: turn boxes of any class into masks with a trained checkpoint.

    from deepmac import BoxPromptedSegmenter
    seg = BoxPromptedSegmenter.from_pretrained("box-prompted-all")  # a bundled model, or
    seg = BoxPromptedSegmenter.from_checkpoint("runs/demo/last.pt")  # device="cuda", amp="bf16"
    masks, scores = seg.predict(image, [x1, y1, x2, y2])  # (1, H, W) bool, (1,) float32 numpy
    masks, scores = seg.predict(image, boxes_xywh, box_format="xywh")  # (N, 4) COCO boxes

``set_image`` runs the backbone once and caches the embeddings, so several ``predict(boxes)``
calls on one image (an annotation tool) cost only the mask branch. Images and boxes go to the
model's device; results come back on the CPU, as NumPy arrays (``return_numpy=False``: torch
tensors).
"""

from __future__ import annotations

import math
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deepmac.data.images import exif_orientation, to_rgb
from deepmac.data.transforms import ResizePad
from deepmac.engine.devices import module_device, resolve_device
from deepmac.engine.precision import amp_dtype, autocast
from deepmac.structures.boxes import box_xywh_to_xyxy, clip_boxes
from deepmac.structures.masks import paste_masks_in_image

#: Box layouts ``predict`` takes: corners, or COCO's corner and size.
BOX_FORMATS = ("xyxy", "xywh")
#: Upper bound on the pasted probabilities held at once by ``predict`` (128 MB in float32).
_MAX_PASTED_FLOATS = 32 * 1024 * 1024


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


def place_model(model: torch.nn.Module, device: str | torch.device | None) -> torch.nn.Module:
    """``model`` in eval mode, moved to ``device`` (``resolve_device`` names), or left where it
    is for None (a model under training is evaluated where it trains)."""
    if device is not None:
        model = model.to(resolve_device(device))
    return model.eval()


def check_prompt_boxes(
    boxes: Tensor | np.ndarray | list,
    image_size: tuple[int, int],
    box_format: str = "xyxy",
) -> Tensor:
    """Validate user boxes and clip them to the image.

    ``boxes`` is ``(N, 4)``, one box ``(4,)``, or empty (``[]``, ``(0, 4)``), as a tensor,
    array or nested list, in ``box_format`` (``"xyxy"`` corners, or COCO ``"xywh"``). Boxes
    that stick out of the image are clipped (documented behaviour); a box with no area left
    inside the image, or with a NaN or infinite coordinate, is an error naming its index.

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
    clipped = clip_boxes(boxes, image_size)
    bad = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if bad.any():
        index = torch.nonzero(bad)[:5, 0].tolist()
        raise ValueError(
            f"{int(bad.sum())} box(es) have no area inside the {image_size[1]}x{image_size[0]} "
            f"image (indices {index}, first {boxes[index[0]].tolist()}); expected x1 < x2, y1 < y2 "
            f"overlapping the image"
        )
    return clipped


#: Checkpoints whose mask branch can segment given boxes: the box-prompted model and Deep-MAC
#: (embeddings cropped with crop_and_resize), Deep-MARC (FPN features RoIAligned at the box).
PROMPTABLE_MODEL_TYPES = ("box_prompted", "deepmac", "deepmarc")


class BoxPromptedSegmenter:
    """Box-prompted segmentation with any model of ``PROMPTABLE_MODEL_TYPES``: its backbone runs
    once per image, its mask branch once per chunk of boxes.

    Args:
        model: the network (put in eval mode here).
        image_size: long side the image is resized to (the training ``data.image_size``).
        box_chunk: boxes run through the mask branch at once (bounds memory for huge box sets).
        device: where the model runs ("cpu", "cuda", "cuda:N", "auto" or a ``torch.device``);
            None keeps it on the device it is on.
        amp: autocast on that device, "none", "bf16" or "fp16" (``deepmac.engine.precision``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        image_size: int,
        box_chunk: int = 256,
        device: str | torch.device | None = None,
        amp: str = "none",
    ) -> None:
        self.amp_dtype = amp_dtype(amp)
        self.model = place_model(model, device)
        self.device = module_device(self.model)
        self.resize = ResizePad(image_size)
        self.box_chunk = box_chunk
        self._cache: dict | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | dict,
        *,
        box_chunk: int = 256,
        device: str | torch.device = "cpu",
        amp: str = "none",
        fuse: bool = True,
    ) -> BoxPromptedSegmenter:
        """Rebuild the model from a training checkpoint (``OUT/last.pt``) on ``device``.

        With ``fuse``, the mask head's BatchNorms are folded into its convolutions and it runs
        channels_last (``fuse_for_inference``): the same outputs up to float rounding, 1.1-1.7x
        faster on CPU (docs/results.md).
        """
        from deepmac.models.build import model_from_checkpoint

        # Every model with a mask branch takes box prompts: Deep-MAC's embeddings and mask
        # branch are those of the box-prompted model; Deep-MARC's head runs on RoIAligned FPN
        # features at any box, as it does at its detections.
        model, cfg = model_from_checkpoint(path, model_types=PROMPTABLE_MODEL_TYPES, fuse=fuse)
        return cls(
            model, image_size=cfg.data.image_size, box_chunk=box_chunk, device=device, amp=amp
        )

    @classmethod
    def from_pretrained(cls, name: str, **kwargs: Any) -> BoxPromptedSegmenter:
        """A bundled model by name (``deepmac models`` lists them, ``docs/models.md`` has
        their cards), e.g. ``"box-prompted-all"``; ``kwargs`` as ``from_checkpoint``.

        Raises:
            ValueError: ``name`` is no bundled model (with a did-you-mean).
        """
        from deepmac.pretrained import MODELS_DIR, bundled_names, resolve_model_path

        if name not in bundled_names():
            resolve_model_path(name)  # raises with the did-you-mean for a bare word
            raise ValueError(
                f"{name!r} is not a bundled model (expected one of "
                f"{', '.join(bundled_names()) or 'none'} in {MODELS_DIR}); for a checkpoint "
                f"file use BoxPromptedSegmenter.from_checkpoint"
            )
        return cls.from_checkpoint(MODELS_DIR / f"{name}.pt", **kwargs)

    def _autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    @torch.no_grad()
    def set_image(self, image: Image.Image | np.ndarray | Tensor) -> None:
        """Run the backbone on ``image`` and cache its embeddings (on the model's device)."""
        # Moved before the resize, so that the model's device (a GPU) does the resize too.
        pixels = image_to_tensor(image).to(self.device)
        height, width = pixels.shape[-2:]
        resized, target = self.resize(pixels, {})
        new_h, new_w = target["size"]
        with self._autocast():
            if self._is_rcnn:
                features = {"pyramid": self.model.features(resized[None])}
            else:
                ((pixel, instance),) = self.model.embeddings(resized[None])
                instance = None if instance is None else instance.float()
                features = {"pixel": pixel.float(), "instance": instance}
        self._cache = {
            **features,
            "input_size": tuple(resized.shape[-2:]),
            "image_size": (height, width),
            "scale": torch.tensor([new_w / width, new_h / height] * 2, device=self.device),
        }

    def predict_probs(self, boxes: Tensor | np.ndarray | list) -> Tensor:
        """Box-relative mask probabilities ``(N, S, S)`` on the CPU for boxes on the cached
        image."""
        return self._probs(check_prompt_boxes(boxes, self._cached()["image_size"])).cpu()

    def _cached(self) -> dict:
        if self._cache is None:
            raise RuntimeError("call set_image(image) before predict(boxes)")
        return self._cache

    @torch.no_grad()
    def _probs(self, boxes: Tensor) -> Tensor:
        """``(N, S, S)`` probabilities, on the model's device, for validated, clipped boxes of
        the original image."""
        cache = self._cached()
        input_boxes = boxes.to(self.device) * cache["scale"]
        branch = self.model.mask_branch
        probs = []
        for start in range(0, len(boxes), self.box_chunk):
            chunk = input_boxes[start : start + self.box_chunk]
            with self._autocast():
                if self._is_rcnn:
                    index = torch.zeros(len(chunk), dtype=torch.long, device=chunk.device)
                    logits = branch(cache["pyramid"], chunk, index)
                else:
                    pixel, instance = cache["pixel"], cache["instance"]
                    logits = branch(pixel, instance, chunk, None, cache["input_size"])
            probs.append(logits.float().sigmoid()[:, 0])
        if not probs:
            size = branch.output_size if self._is_rcnn else branch.mask_size
            return torch.zeros(0, size, size, device=self.device)
        return torch.cat(probs)

    @property
    def _is_rcnn(self) -> bool:
        """Deep-MARC: FPN features and RoIAlign instead of embeddings and crop_and_resize."""
        return getattr(self.model, "model_type", None) == "deepmarc"

    def predict(
        self,
        image: Image.Image | np.ndarray | Tensor | None,
        boxes: Tensor | np.ndarray | list,
        *,
        box_format: str = "xyxy",
        mask_threshold: float = 0.5,
        return_numpy: bool = True,
    ) -> tuple[np.ndarray, np.ndarray] | tuple[Tensor, Tensor]:
        """Masks for ``boxes`` on ``image``, pasted into the image frame, and their scores.

        Args:
            image: the image, or None to reuse the one given to ``set_image``.
            boxes: ``(N, 4)``, one box ``(4,)`` or none (``[]``), in pixels of the original
                image, as a tensor, array or list.
            box_format: ``"xyxy"`` (corners) or ``"xywh"`` (COCO: corner, width, height).
            mask_threshold: probability above which a pixel is in the mask (strict; Deep-MARC
                ``>=``, as its training).
            return_numpy: NumPy arrays (else CPU torch tensors).

        Returns:
            ``(masks, scores)``: ``(N, H, W)`` bool masks and ``(N,)`` float32 scores, the mean
            mask probability over the mask's pixels (0 for an empty mask): how sure the model
            is of the mask it drew, not whether the box holds an object.
        """
        if image is not None:
            self.set_image(image)
        image_size = self._cached()["image_size"]
        clipped = check_prompt_boxes(boxes, image_size, box_format).to(self.device)
        probs = self._probs(clipped)
        # Each model pastes with the convention it crops with (Deep-MARC: RoIAlign's).
        paste = getattr(self.model, "paste_masks", paste_masks_in_image)
        height, width = image_size
        masks = torch.zeros(len(clipped), height, width, dtype=torch.bool, device=self.device)
        scores = torch.zeros(len(clipped), device=self.device)
        # Pasted where the probabilities are, a bounded number of images at a time; the bool
        # masks come from the paste's own threshold rule, the scores from its soft values.
        chunk = max(1, _MAX_PASTED_FLOATS // max(1, height * width))
        for start in range(0, len(clipped), chunk):
            part = slice(start, start + chunk)
            soft = paste(probs[part], clipped[part], image_size, None)  # (n, H, W)
            hard = paste(probs[part], clipped[part], image_size, mask_threshold)
            area = hard.sum(dim=(1, 2))
            scores[part] = (soft * hard).sum(dim=(1, 2)) / area.clamp(min=1)
            masks[part] = hard
        masks, scores = masks.cpu(), scores.cpu()
        if return_numpy:
            return masks.numpy(), scores.numpy()
        return masks, scores
