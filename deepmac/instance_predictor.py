"""``DeepMACPredictor``: images in, instances out (boxes, scores, classes, masks) with Deep-MAC
or Deep-MARC (any model type of ``DETECTOR_MODEL_TYPES``).

predictor = load_model("runs/deepmac/last.pt")
instances = predictor.predict(image)   # boxes (K, 4) xyxy, scores, category_ids, masks (K, H, W)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deepmac.data.transforms import ResizePad
from deepmac.predictor import image_to_tensor, inference_autocast
from deepmac.structures.masks import paste_masks_in_image

#: Checkpoints holding a detector with a mask branch: Deep-MAC and Deep-MARC.
DETECTOR_MODEL_TYPES = ("deepmac", "deepmarc")


@dataclass
class Instances:
    """Detections of one image in its own pixel frame.

    Attributes:
        boxes: ``(K, 4)`` float32 xyxy. scores: ``(K,)``. labels: ``(K,)`` contiguous class
        ids. category_ids: ``(K,)`` COCO category ids. names: K class names.
        masks: ``(K, H, W)`` bool.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    category_ids: Tensor
    names: list[str]
    masks: Tensor


class DeepMACPredictor:
    """Run a ``DeepMAC`` or ``DeepMARC`` model on single images.

    Args:
        model: the network (put in eval mode here).
        image_size: long side images are resized to (the training ``data.image_size``).
        category_ids, class_names: the label map of the training data.
        score_threshold: drop detections below this score (0 keeps all 100, as the official
            evaluation does).
        amp_dtype: e.g. ``torch.bfloat16`` for CPU autocast.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        image_size: int,
        category_ids: list[int],
        class_names: list[str],
        score_threshold: float = 0.0,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model.eval()
        self.resize = ResizePad(image_size)
        self.category_ids = torch.as_tensor(category_ids, dtype=torch.long)
        self.class_names = list(class_names)
        self.score_threshold = score_threshold
        self.amp_dtype = amp_dtype

    @classmethod
    def from_checkpoint(
        cls, path: str | Path | dict, *, amp_dtype: torch.dtype | None = None, fuse: bool = True
    ) -> DeepMACPredictor:
        from deepmac.models.build import model_from_checkpoint

        model, cfg = model_from_checkpoint(path, model_types=DETECTOR_MODEL_TYPES, fuse=fuse)
        return cls(
            model,
            image_size=cfg.data.image_size,
            category_ids=cfg.model.category_ids,
            class_names=cfg.model.class_names,
            amp_dtype=amp_dtype,
        )

    @torch.no_grad()
    def predict(
        self, image: Image.Image | np.ndarray | Tensor, *, threshold: float = 0.5
    ) -> Instances:
        """Detect and segment every object of ``image``.

        Args:
            image: PIL image, ``(H, W, 3)`` uint8 array or ``(3, H, W)`` tensor (0..255 RGB).
            threshold: mask probability threshold (strict).
        """
        pixels = image_to_tensor(image)
        height, width = pixels.shape[-2:]
        resized, target = self.resize(pixels, {})
        new_h, new_w = target["size"]
        with inference_autocast(self.amp_dtype):
            out = self.model(resized[None], image_sizes=[(new_h, new_w)])
        (det,) = out.detections
        probs = out.mask_logits[-1].float().sigmoid()[:, 0]  # (K, S, S)
        keep = det.scores >= self.score_threshold
        scale = torch.tensor([width / new_w, height / new_h] * 2)
        boxes = det.boxes[keep].float() * scale
        # Each model pastes with its own crop convention: TF crop_and_resize for Deep-MAC,
        # half-pixel RoIAlign for Deep-MARC (``paste_masks``). Boxes of zero area (a collapsed
        # size prediction) get an empty mask, not an error.
        paste = getattr(self.model, "paste_masks", paste_masks_in_image)
        masks = paste(probs[keep], boxes, (height, width), threshold)
        labels = det.labels[keep]
        return Instances(
            boxes=boxes,
            scores=det.scores[keep],
            labels=labels,
            category_ids=self.category_ids[labels],
            names=[self.class_names[int(c)] for c in labels],
            masks=masks,
        )


def load_model(path: str | Path, **kwargs) -> DeepMACPredictor:
    """A ``DeepMACPredictor`` from a training checkpoint (``OUT/last.pt``)."""
    return DeepMACPredictor.from_checkpoint(path, **kwargs)
