"""``DeepMACPredictor``: images in, instances out (boxes, scores, classes, masks) with Deep-MAC
or Deep-MARC (any family that detects: ``ModelFamily.detector``).

predictor = load_model("runs/deepmac/last.pt")   # device="cuda", amp="bf16", score_threshold=
instances = predictor.predict(image)   # boxes (K, 4) xyxy, scores, category_ids, masks (K, H, W)

The image goes to the model's device; the instances come back on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from deepmac.engine.devices import module_device, place_model
from deepmac.engine.precision import amp_dtype, autocast
from deepmac.inference.image_frame import ImageFrame

#: Detections below this score are dropped by ``load_model`` and ``deepmac predict`` (whose
#: ``--score-threshold`` default spells the same number: the CLI parser imports no torch).
DEFAULT_SCORE_THRESHOLD = 0.3


@dataclass
class Instances:
    """Detections of one image in its own pixel frame.

    Attributes:
        boxes: ``(K, 4)`` float32 xyxy. scores: ``(K,)``. labels: ``(K,)`` contiguous class
        ids. category_ids: ``(K,)`` COCO category ids. names: K class names.
        masks: ``(K, H, W)`` bool. All tensors on the CPU.
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
        device: where the model runs ("cpu", "cuda", "cuda:N", "auto" or a ``torch.device``);
            None keeps it on the device it is on.
        amp: autocast on that device, "none", "bf16" or "fp16" (``deepmac.engine.precision``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        image_size: int,
        category_ids: list[int],
        class_names: list[str],
        score_threshold: float = 0.0,
        device: str | torch.device | None = None,
        amp: str = "none",
    ) -> None:
        self.amp_dtype = amp_dtype(amp)
        self.model = place_model(model, device)
        self.device = module_device(self.model)
        self.input_size = image_size
        # A CPU-side lookup table: the labels are moved to the CPU before indexing it.
        self.category_ids = torch.as_tensor(category_ids, dtype=torch.long, device="cpu")
        self.class_names = list(class_names)
        self.score_threshold = score_threshold

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | dict,
        *,
        device: str | torch.device = "cpu",
        amp: str = "none",
        fuse: bool = True,
    ) -> DeepMACPredictor:
        """Rebuild the detector from a training checkpoint (``OUT/last.pt``) on ``device``."""
        from deepmac.inference.checkpoints import model_from_checkpoint

        model, cfg = model_from_checkpoint(path, detector=True, fuse=fuse)
        return cls(
            model,
            image_size=cfg.data.image_size,
            category_ids=cfg.model.category_ids,
            class_names=cfg.model.class_names,
            device=device,
            amp=amp,
        )

    @torch.no_grad()
    def predict(
        self, image: Image.Image | np.ndarray | Tensor, *, mask_threshold: float = 0.5
    ) -> Instances:
        """Detect and segment every object of ``image``.

        Args:
            image: PIL image, ``(H, W, 3)`` uint8 array or ``(3, H, W)`` tensor (0..255 RGB).
            mask_threshold: mask probability threshold (strict; Deep-MARC ``>=``).
        """
        frame = ImageFrame.of(image, input_size=self.input_size, device=self.device)
        with autocast(self.device, self.amp_dtype):
            out = self.model(frame.input[None], image_sizes=[frame.content_size])
        (det,) = out.detections
        probs = out.mask_logits[-1].float().sigmoid()[:, 0]  # (K, S, S)
        keep = det.scores >= self.score_threshold
        boxes = frame.to_image(det.boxes[keep])
        # Each family pastes with the convention its branch crops with (TF crop_and_resize for
        # Deep-MAC, half-pixel RoIAlign for Deep-MARC). Boxes of zero area (a collapsed size
        # prediction) get an empty mask, not an error. Pasted on the model's device; only the
        # results cross to the CPU.
        masks = frame.paste(probs[keep], boxes, self.model.mask_branch.paste, mask_threshold)
        labels = det.labels[keep].cpu()
        return Instances(
            boxes=boxes.cpu(),
            scores=det.scores[keep].cpu(),
            labels=labels,
            category_ids=self.category_ids[labels],
            names=[self.class_names[int(c)] for c in labels],
            masks=masks.cpu(),
        )


def load_model(
    path: str | Path,
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    device: str | torch.device = "cpu",
    amp: str = "none",
    fuse: bool = True,
) -> DeepMACPredictor:
    """A ``DeepMACPredictor`` from a training checkpoint (``OUT/last.pt``) on ``device``
    ("cpu", "cuda", "cuda:N" or "auto"), with ``amp`` autocast ("none", "bf16", "fp16"),
    keeping detections scoring at least ``score_threshold`` (``deepmac predict``'s default;
    0 keeps all, as COCO evaluation wants)."""
    predictor = DeepMACPredictor.from_checkpoint(path, device=device, amp=amp, fuse=fuse)
    predictor.score_threshold = score_threshold
    return predictor
