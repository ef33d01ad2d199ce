"""Run an exported deepmac ONNX file with onnxruntime: the deployment path, end to end.

    seg = OnnxModel("box_prompted.onnx")
    masks = seg.predict_masks(image, boxes_xyxy)     # (N, H, W) bool, like BoxPromptedSegmenter
    det = OnnxModel("deepmac.onnx").detect(image)    # Instances, like DeepMACPredictor

The pre- and post-processing around the graph (resize-pad, box scaling, pasting) is the
predictors' own ``ImageFrame``: what a deployment in another language has to re-implement;
``deepmac.export.onnx`` documents the graph's inputs and outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepmac.inference.detector import Instances
from deepmac.inference.image_frame import ImageFrame, check_prompt_boxes
from deepmac.structures.masks import PASTE_CONVENTIONS


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
        # Files from before the ``paste`` metadata: Deep-MARC's own graph pasted RoIAlign-style.
        convention = meta.get("paste") or (
            "roi_align" if self.model_type == "deepmarc" else "crop_and_resize"
        )
        self.paste = PASTE_CONVENTIONS[convention]

    def _prepare(self, image) -> tuple[dict[str, np.ndarray], ImageFrame]:
        """The graph's image inputs (``(1, 3, S, S)`` float32, ``(2,)`` content size) and the
        image's frame (onnxruntime runs on the CPU here: so does every tensor around it)."""
        frame = ImageFrame.of(image, input_size=self.image_size, device="cpu")
        feeds = {"image": frame.input[None].numpy()}
        if "content_size" in self.input_names:
            feeds["content_size"] = np.array(frame.content_size, dtype=np.float32)
        return feeds, frame

    def mask_probs(self, image: Image.Image | np.ndarray, boxes) -> tuple[np.ndarray, torch.Tensor]:
        """Box-relative probabilities ``(N, M, M)`` and the validated, clipped boxes."""
        if "boxes" not in self.input_names:
            raise ValueError(
                f"this ONNX file is a {self.model_type!r} graph without box input; export with "
                "--prompt for box prompts"
            )
        probs, clipped, _ = self._mask_probs(image, boxes)
        return probs, clipped

    def _mask_probs(self, image, boxes) -> tuple[np.ndarray, torch.Tensor, ImageFrame]:
        feeds, frame = self._prepare(image)
        clipped = check_prompt_boxes(boxes, frame.image_size)
        feeds["boxes"] = frame.to_input(clipped).numpy().astype(np.float32)
        (probs,) = self.session.run(["mask_probs"], feeds)
        return probs, clipped, frame

    def predict_masks(self, image, boxes, *, threshold: float = 0.5) -> torch.Tensor:
        """``(N, H, W)`` bool masks for ``(N, 4)`` xyxy boxes of ``image``."""
        probs, clipped, frame = self._mask_probs(image, boxes)
        return frame.paste(torch.from_numpy(probs), clipped, self.paste, threshold)

    def detect(self, image, *, score_threshold: float = 0.0) -> Instances:
        """Detections with masks in the image's own frame (a Deep-MAC or Deep-MARC graph)."""
        if "boxes" in self.input_names:
            raise ValueError(f"this ONNX file is a {self.model_type!r} graph that needs boxes")
        feeds, frame = self._prepare(image)
        boxes, scores, labels, probs = (
            torch.from_numpy(a) for a in self.session.run(self.output_names, feeds)
        )
        keep = scores >= score_threshold
        boxes = frame.to_image(boxes[keep])
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
            masks=frame.paste(probs[keep], boxes, self.paste, 0.5),
        )
