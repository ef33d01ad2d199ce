"""Run an exported deepmac ONNX file with onnxruntime: the deployment path, end to end.

    seg = OnnxModel("box_prompted.onnx")
    masks = seg.predict_masks(image, boxes_xyxy)     # (N, H, W) bool, like BoxPromptedSegmenter
    det = OnnxModel("deepmac.onnx").detect(image)    # Instances, like DeepMACPredictor

The pre- and post-processing here (resize-pad, box scaling, pasting) is what a deployment in
another language has to re-implement around the graph; ``deepmac.export.onnx`` documents the
graph's inputs and outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepmac.data.transforms import ResizePad
from deepmac.instance_predictor import Instances
from deepmac.predictor import check_prompt_boxes, image_to_tensor
from deepmac.structures.masks import paste_masks_in_image, paste_roi_masks


class OnnxModel:
    """An exported graph in an onnxruntime session, with the image preprocessing it expects.

    Args:
        path: ``.onnx`` file written by ``deepmac export``.
        threads: intra-op threads for onnxruntime (0 = its default).
    """

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:  # the [export] extra
            raise ImportError(
                "running ONNX files needs onnxruntime: pip install 'deepmac[export]'"
            ) from err
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.model_type = meta.get("model_type", "box_prompted")
        self.category_ids = json.loads(meta.get("category_ids", "[]"))
        self.class_names = json.loads(meta.get("class_names", "[]"))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.image_size = int(self.session.get_inputs()[0].shape[-1])
        self.resize = ResizePad(self.image_size)

    def _prepare(self, image) -> tuple[dict[str, np.ndarray], tuple[int, int], torch.Tensor]:
        """The graph's image inputs (``(1, 3, S, S)`` float32, ``(2,)`` content size), the
        original ``(H, W)``, and the ``(4,)`` factor from original to input pixels."""
        pixels = image_to_tensor(image)
        height, width = pixels.shape[-2:]
        resized, target = self.resize(pixels, {})
        new_h, new_w = target["size"]
        # onnxruntime runs on the CPU here: every tensor around the graph is a CPU one.
        scale = torch.tensor([new_w / width, new_h / height] * 2, device="cpu")
        feeds = {"image": resized[None].numpy()}
        if "content_size" in self.input_names:
            feeds["content_size"] = np.array([new_h, new_w], dtype=np.float32)
        return feeds, (height, width), scale

    def mask_probs(self, image: Image.Image | np.ndarray, boxes) -> tuple[np.ndarray, torch.Tensor]:
        """Box-relative probabilities ``(N, M, M)`` and the validated, clipped boxes."""
        if "boxes" not in self.input_names:
            raise ValueError(
                f"this ONNX file is a {self.model_type!r} graph without box input; export with "
                "--prompt for box prompts"
            )
        feeds, image_size, scale = self._prepare(image)
        clipped = check_prompt_boxes(boxes, image_size)
        feeds["boxes"] = (clipped * scale).numpy().astype(np.float32)
        (probs,) = self.session.run(["mask_probs"], feeds)
        return probs, clipped

    def predict_masks(self, image, boxes, *, threshold: float = 0.5) -> torch.Tensor:
        """``(N, H, W)`` bool masks for ``(N, 4)`` xyxy boxes of ``image``."""
        probs, clipped = self.mask_probs(image, boxes)
        image_size = tuple(image_to_tensor(image).shape[-2:])
        return paste_masks_in_image(torch.from_numpy(probs), clipped, image_size, threshold)

    def detect(self, image, *, score_threshold: float = 0.0) -> Instances:
        """Detections with masks in the image's own frame (a Deep-MAC or Deep-MARC graph)."""
        if "boxes" in self.input_names:
            raise ValueError(f"this ONNX file is a {self.model_type!r} graph that needs boxes")
        feeds, (height, width), scale = self._prepare(image)
        boxes, scores, labels, probs = (
            torch.from_numpy(a) for a in self.session.run(self.output_names, feeds)
        )
        keep = scores >= score_threshold
        boxes = boxes[keep] / scale
        labels = labels[keep]
        return Instances(
            boxes=boxes,
            scores=scores[keep],
            labels=labels,
            category_ids=torch.tensor(
                [self.category_ids[int(c)] for c in labels], dtype=torch.long, device="cpu"
            )
            if self.category_ids
            else labels.clone(),
            names=[self.class_names[int(c)] for c in labels] if self.class_names else [],
            masks=self._paste(probs[keep], boxes, (height, width)),
        )

    @property
    def _paste(self):
        """The model family's paste convention: Deep-MARC's masks are RoIAligned crops."""
        if self.model_type == "deepmarc":
            return paste_roi_masks
        return paste_masks_in_image
