"""``BoxPromptedSegmenter``: turn boxes of any class into masks with a trained checkpoint.

    from deepmac import BoxPromptedSegmenter
    seg = BoxPromptedSegmenter.from_pretrained("box-prompted-all")  # a bundled model, or
    seg = BoxPromptedSegmenter.from_checkpoint("runs/demo/last.pt")  # device="cuda", amp="bf16"
    masks, scores = seg.predict(image, [x1, y1, x2, y2])  # (1, H, W) bool, (1,) float32 numpy
    masks, scores = seg.predict(image, boxes_xywh, box_format="xywh")  # (N, 4) COCO boxes

Every family takes box prompts through the one mask-branch contract
(``deepmac.models.mask_branch``): ``set_image`` runs ``model.prompt_features`` once and caches
it, so several ``predict(boxes)`` calls on one image (an annotation tool) cost only the mask
branch. Images and boxes go to the model's device; results come back on the CPU, as NumPy
arrays (``return_numpy=False``: torch tensors).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deepmac.engine.devices import module_device, place_model
from deepmac.engine.precision import amp_dtype, autocast
from deepmac.inference.image_frame import ImageFrame, check_prompt_boxes, image_to_tensor

__all__ = ["BoxPromptedSegmenter", "check_prompt_boxes", "image_to_tensor"]


class BoxPromptedSegmenter:
    """Box-prompted segmentation with a model of any family: its ``prompt_features`` run once
    per image, its mask branch once per chunk of boxes.

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
        self.input_size = image_size
        self.box_chunk = box_chunk
        self._frame: ImageFrame | None = None
        self._features: Any = None

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
        """Rebuild the model from a training checkpoint (``OUT/last.pt``) or a bundled model's
        name on ``device``.

        With ``fuse``, the mask head's BatchNorms are folded into its convolutions and it runs
        channels_last (``prepare_for_inference``): the same outputs up to float rounding,
        1.1-1.7x faster on CPU (docs/results.md).
        """
        from deepmac.inference.checkpoints import model_from_checkpoint

        model, cfg = model_from_checkpoint(path, fuse=fuse)
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
        from deepmac.engine.pretrained import MODELS_DIR, bundled_names, resolve_model_path

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
        """Run ``model.prompt_features`` on ``image`` and cache them (on the model's device)."""
        self._frame = ImageFrame.of(image, input_size=self.input_size, device=self.device)
        with self._autocast():
            self._features = self.model.prompt_features(self._frame.input[None])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image given to ``set_image``."""
        return self._cached().image_size

    def _cached(self) -> ImageFrame:
        if self._frame is None:
            raise RuntimeError("call set_image(image) before predict(boxes)")
        return self._frame

    def predict_probs(self, boxes: Tensor | np.ndarray | list) -> Tensor:
        """Box-relative mask probabilities ``(N, S, S)`` on the CPU for boxes on the cached
        image."""
        clipped = check_prompt_boxes(boxes, self._cached().image_size)
        return self._probs(clipped).cpu()

    @torch.no_grad()
    def _probs(self, boxes: Tensor) -> Tensor:
        """``(N, S, S)`` probabilities, on the model's device, for validated, clipped boxes of
        the original image."""
        input_boxes = self._cached().to_input(boxes)
        branch = self.model.mask_branch
        probs = []
        for start in range(0, len(boxes), self.box_chunk):
            chunk = input_boxes[start : start + self.box_chunk]
            with self._autocast():
                logits = branch(self._features, chunk, None)
            probs.append(logits.float().sigmoid()[:, 0])
        if not probs:
            size = branch.output_size
            return torch.zeros(0, size, size, device=self.device)
        return torch.cat(probs)

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
                image, as a tensor, array or list (checked by ``check_prompt_boxes``: a box
                with no area inside the image, or a non-finite one, is an error).
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
        clipped = check_prompt_boxes(boxes, self._cached().image_size, box_format)
        return self.predict_clipped(
            clipped, mask_threshold=mask_threshold, return_numpy=return_numpy
        )

    def predict_clipped(
        self, boxes: Tensor, *, mask_threshold: float = 0.5, return_numpy: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | tuple[Tensor, Tensor]:
        """``predict`` on the cached image for ``(N, 4)`` xyxy boxes that already passed
        ``check_prompt_boxes`` (a boxes file's, checked once when read)."""
        frame = self._cached()
        boxes = boxes.to(self.device)
        probs = self._probs(boxes)
        masks, scores = frame.paste_with_scores(
            probs, boxes, self.model.mask_branch.paste, mask_threshold
        )
        masks, scores = masks.cpu(), scores.cpu()
        if return_numpy:
            return masks.numpy(), scores.numpy()
        return masks, scores
