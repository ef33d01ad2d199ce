"""ONNX export of trained models, and a parity check against PyTorch with onnxruntime.

The wrappers here fix what an ONNX graph can take and give; the models stay unaware of export.

Box-prompted graph (``BoxPromptedOnnx``, any family through the mask-branch contract):
    inputs  ``image``  ``(1, 3, S, S)`` float32 RGB in 0..255, the image resized so its long side
            is ``S`` (bilinear, no antialiasing) and zero-padded bottom/right to a square
            (``deepmac.data.transforms.ResizePad``; ``S`` is the training ``data.image_size``);
            ``boxes`` ``(N, 4)`` float32 xyxy in pixels of that resized image, ``N`` dynamic
            (0 allowed).
    output  ``mask_probs`` ``(N, M, M)`` float32 box-relative mask probabilities (``M`` = the
            mask branch's ``output_size``); paste them into the image with the branch's
            convention (``paste_masks_in_image``; Deep-MARC: ``paste_roi_masks``; the file's
            ``paste`` metadata names it).

Deep-MAC graph (``DeepMACOnnx``): inputs ``image`` as above and ``content_size`` ``(2,)`` float32,
the ``(h, w)`` of the resized image before padding; outputs ``boxes`` ``(K, 4)`` xyxy in
input pixels (clipped to the content), ``scores`` ``(K,)``, ``labels`` ``(K,)`` int64
contiguous class ids, ``mask_probs`` ``(K, M, M)``, with ``K = max_detections`` fixed: the top-K
CenterNet peaks, no threshold (filter by score outside the graph).

Deep-MARC graph (``DeepMARCOnnx``, same inputs and outputs): ``K`` is dynamic, at most
``max_detections``: the RPN, the box head's score threshold and per-class NMS all run inside
the graph (NMS and RoIAlign as ONNX ``NonMaxSuppression`` and ``RoiAlign``, see
``deepmac.export.onnx_ops``), so the file gives what ``DeepMARC`` gives in PyTorch.

``deepmac.export.runtime`` runs either file with onnxruntime, doing this pre- and
post-processing, for users who want the whole path without PyTorch models.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from deepmac.export.onnx_ops import custom_translation_table
from deepmac.models.families import get_family
from deepmac.utils.io import atomic_write

logger = logging.getLogger(__name__)

#: Numbers of boxes the parity check runs (the issue's 1, 7 and 0: 0 and 1 are the sizes an
#: exporter is most likely to have specialised a dynamic dimension to).
PARITY_BOX_COUNTS = (1, 7, 0)


class BoxPromptedOnnx(nn.Module):
    """Image and boxes in, per-box mask probabilities out: ``prompt_features`` and the mask
    branch, the contract every family keeps (``deepmac.models.mask_branch``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, image: Tensor, boxes: Tensor) -> Tensor:
        """``(1, 3, S, S)`` image, ``(N, 4)`` boxes -> ``(N, M, M)`` probabilities."""
        features = self.model.prompt_features(image)
        index = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
        return torch.sigmoid(self.model.mask_branch(features, boxes, index))[:, 0]


class DeepMACOnnx(nn.Module):
    """Image in; top-K boxes, scores, labels and per-box mask probabilities out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, image: Tensor, content_size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(1, 3, S, S)`` image, ``(2,)`` content ``(h, w)`` -> boxes ``(K, 4)``, scores
        ``(K,)``, labels ``(K,)``, mask probabilities ``(K, M, M)``."""
        out = self.model(image, image_sizes=content_size[None])
        det = out.detections[0]
        return det.boxes, det.scores, det.labels, torch.sigmoid(out.mask_logits[-1])[:, 0]


class DeepMARCOnnx(nn.Module):
    """Image in; Deep-MARC's detections with per-box mask probabilities out, their number ``K``
    (at most ``max_detections``) decided inside the graph by the score threshold and NMS.

    The mask head runs on a fixed ``max_detections`` boxes (the detections, padded with a dummy
    box) and its output is cut to ``K`` afterwards:
    convolutions over a batch whose size is only known at run time do not trace, and Mask
    R-CNN's low score threshold leaves close to ``max_detections`` boxes on real images anyway.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, image: Tensor, content_size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(1, 3, S, S)`` image, ``(2,)`` content ``(h, w)`` -> boxes ``(K, 4)``, scores
        ``(K,)``, labels ``(K,)``, mask probabilities ``(K, M, M)``."""
        model = self.model
        features = model.features(image)
        image_sizes = content_size[None]
        _, (det,) = model.detect(features, image_sizes)
        slots = model.roi_heads.detections_per_image
        dummy = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=image.device).expand(slots, 4)
        padded = torch.cat([det.boxes, dummy])[:slots]  # (slots, 4): a static size
        index = torch.zeros(slots, dtype=torch.long, device=image.device)
        probs = torch.sigmoid(model.mask_branch(features, padded, index))[:, 0]
        count = det.boxes.shape[0]
        return det.boxes, det.scores, det.labels, probs[:count]


#: The graphs' input and output names: with box prompts, and a detector's own.
_PROMPT_IO = (["image", "boxes"], ["mask_probs"])
_DETECTOR_IO = (["image", "content_size"], ["boxes", "scores", "labels", "mask_probs"])


def onnx_wrapper(model: nn.Module, *, prompt: bool | None = None) -> tuple[nn.Module, list, list]:
    """The export wrapper for ``model`` and its input / output names.

    Args:
        model: a trained model (``model.model_type`` names its family).
        prompt: export the box-prompted graph (boxes in) even for a detector, whose mask
            branch takes box prompts as well. Default: the family's own graph.
    """
    family = get_family(getattr(model, "model_type", None))
    if prompt or not family.detector:
        return BoxPromptedOnnx(model), *_PROMPT_IO
    return family.load("onnx_wrapper")(model), *_DETECTOR_IO


def example_inputs(
    input_names: list[str], image_size: int, *, num_boxes: int = 3, seed: int = 0
) -> tuple[Tensor, ...]:
    """Random inputs of the export shapes: a ``(1, 3, S, S)`` image and ``num_boxes`` boxes
    inside it. Boxes default to 3: an example of size 1 lets the exporter specialise the box
    dimension to 1 (seen with the dynamo exporter)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, image_size, image_size, generator=generator) * 255
    if "boxes" not in input_names:
        # Content narrower than the square, as for a landscape image.
        return image, torch.tensor([image_size * 0.75, float(image_size)])
    return image, random_boxes(num_boxes, image_size, generator)


def random_boxes(num: int, image_size: int, generator: torch.Generator) -> Tensor:
    """``(num, 4)`` xyxy boxes of at least 4 pixels inside an ``image_size`` square."""
    corner = torch.rand(num, 2, generator=generator) * (image_size - 8)
    size = 4 + torch.rand(num, 2, generator=generator) * (image_size - 4 - corner)
    return torch.cat([corner, (corner + size).clamp(max=image_size)], dim=1)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's chatter: it logs every torchvision op it cannot find and warns
    about traced Python code; the parity check, not those messages, says whether the graph
    is right."""
    logger_ = logging.getLogger("torch.onnx")
    level = logger_.level
    logger_.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger_.setLevel(level)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: int,
    prompt: bool | None = None,
    opset: int = 18,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` as an ONNX file (atomically) and check that onnx accepts it.

    Args:
        model: trained model in eval mode (use it unfused or fused; both export).
        path: output ``.onnx`` file.
        image_size: ``S`` of the square input (the training ``data.image_size``).
        prompt: see ``onnx_wrapper``.
        opset: ONNX opset.
        metadata: strings stored in the file's ``metadata_props`` (``deepmac.export.runtime``
            reads the label map and model type from there); ``paste``, the mask branch's
            paste convention, is added.

    Returns:
        The path written.
    """
    try:
        import onnx
    except ImportError as err:  # the [export] extra
        raise ImportError(
            "ONNX export needs the onnx package: pip install 'deepmac[export]'"
        ) from err
    wrapper, input_names, output_names = onnx_wrapper(model, prompt=prompt)
    args = example_inputs(input_names, image_size)
    # The number of boxes is dynamic; the image side is fixed (the model's training size).
    dynamic_shapes = (
        {"image": None, "boxes": {0: torch.export.Dim.DYNAMIC}} if "boxes" in input_names else None
    )
    buffer = io.BytesIO()
    with _quiet_exporter():
        torch.onnx.export(
            wrapper,
            args,
            buffer,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
            custom_translation_table=custom_translation_table(),
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    metadata = {"paste": model.mask_branch.paste_convention, **(metadata or {})}
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    path = atomic_write(path, lambda f: f.write(proto.SerializeToString()))
    logger.info("wrote %s (%s -> %s)", path, ", ".join(input_names), ", ".join(output_names))
    return path


def check_onnx_parity(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: int,
    prompt: bool | None = None,
    box_counts: tuple[int, ...] = PARITY_BOX_COUNTS,
    seed: int = 1,
) -> dict[str, float]:
    """Run the ONNX file in onnxruntime and PyTorch on the same random inputs.

    Returns:
        Max absolute difference of each float output: ``{"boxes=7/mask_probs": 3e-7, ...}`` for
        a box-prompted graph (one entry per box count), ``{"boxes": ..., "scores": ...,
        "mask_probs": ...}`` plus ``"labels_mismatch"`` (count) for Deep-MAC.
    """
    import onnxruntime as ort

    wrapper, input_names, output_names = onnx_wrapper(model, prompt=prompt)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    if "boxes" in input_names:
        image = torch.rand(1, 3, image_size, image_size, generator=generator) * 255
        cases = {f"boxes={n}": (image, random_boxes(n, image_size, generator)) for n in box_counts}
    else:
        cases = {"": example_inputs(input_names, image_size, seed=seed)}
    diffs: dict[str, float] = {}
    for case, args in cases.items():
        with torch.no_grad():
            expected = wrapper(*args)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {name: a.numpy() for name, a in zip(input_names, args, strict=True)}
        got = session.run(output_names, feeds)
        prefix = f"{case}/" if case else ""
        for name, ours, theirs in zip(output_names, expected, got, strict=True):
            ours = ours.numpy()
            if ours.shape != theirs.shape:
                raise AssertionError(
                    f"{prefix}{name}: onnxruntime gave shape {theirs.shape}, PyTorch {ours.shape}"
                )
            if np.issubdtype(ours.dtype, np.integer):
                diffs[f"{prefix}{name}_mismatch"] = float((ours != theirs).sum())
            else:
                diffs[f"{prefix}{name}"] = float(np.abs(ours - theirs).max(initial=0.0))
    return diffs
