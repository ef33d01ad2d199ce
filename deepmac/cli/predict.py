"""``deepmac predict``: masks for image files, from box prompts (instances JSON, results JSON,
CSV) or from Deep-MAC's own detections, written as a COCO results list or a COCO instances
JSON an annotation tool imports; optional overlays."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from deepmac.cli.errors import UsageError
from deepmac.cli.image_files import ImageFile, collect_images
from deepmac.cli.paths import check_output_file, check_output_folder

if TYPE_CHECKING:
    from torch import Tensor

    from deepmac.inference.prompts import BoxPrompt

    Array = np.ndarray | Tensor

__all__ = ["run_predict"]

logger = logging.getLogger(__name__)

#: Mask pixels predicted and encoded at once (a bool each): 64 MB, i.e. 2 masks of a
#: 6000 x 4000 image or 200 of a 640 x 480 one.
MASK_PIXELS_PER_CHUNK = 64 * 1024 * 1024


class _Output:
    """The ``--format`` file being built: a COCO results list, or an ``InstancesFile``."""

    def __init__(self, args: argparse.Namespace, categories: list[dict[str, Any]]) -> None:
        from deepmac.evaluation.instances_file import InstancesFile

        self.results: list[dict[str, Any]] = []
        self.instances = (
            InstancesFile(
                categories, segmentation=args.segmentation, tolerance=args.polygon_tolerance
            )
            if args.format == "instances"
            else None
        )
        self.count = self.empty = 0

    def add_image(
        self,
        image_id: int,
        image: ImageFile,
        height: int,
        width: int,
        crowd: list[dict[str, Any]] | None = None,
    ) -> None:
        """An image of the output, with the input's ``crowd`` annotations of it (instances
        only: a results list has no images, and crowd regions are no detections)."""
        if self.instances is not None:
            self.instances.add_image(image_id, image.name, height, width)
            self.instances.add_crowd(crowd or [])

    def add(
        self, image_id: int, boxes: Array, scores: Array, category_ids: Array, masks: Array
    ) -> None:
        """One image's instances: ``boxes`` ``(N, 4)`` xyxy, ``scores`` and ``category_ids``
        ``(N,)``, ``masks`` ``(N, H, W)`` bool."""
        from deepmac.evaluation import instances_to_coco_results

        if self.instances is None:
            self.results += instances_to_coco_results(image_id, boxes, scores, category_ids, masks)
            self.count += len(boxes)
            return
        empty = self.instances.add(
            image_id, *(np.asarray(v) for v in (boxes, category_ids, scores, masks))
        )
        self.count += len(boxes) - empty
        self.empty += empty

    def write(self, path: str | Path) -> None:
        from deepmac.evaluation import write_coco_results

        if self.instances is None:
            write_coco_results(path, self.results)
        else:
            self.instances.write(path)
        if self.empty:
            logger.warning(
                "%d empty mask(s) left out of %s (no pixel above the threshold)", self.empty, path
            )


def _check_arguments(args: argparse.Namespace) -> None:
    if args.segmentation == "polygon" and args.format != "instances":
        raise UsageError(
            "--segmentation polygon needs --format instances; found --format results, whose "
            "masks are RLE (pycocotools scores RLE results only)"
        )


def _check_outputs_spare_inputs(
    args: argparse.Namespace, images: list[ImageFile], viz: Path | None
) -> None:
    """Refuse an ``--out`` that is an image, and overlays that would be written over an image
    (``--viz`` = a folder of PNG photos): inputs are never replaced. (``--out`` = the boxes
    file is refused earlier, before the images are listed.)"""
    check_output_file(
        args.out, "--out", {f"the --images file {image.path}": image.path for image in images}
    )
    if viz is None:
        return
    photos = {image.path.resolve() for image in images}
    for image in images:
        overlay = _overlay_path(viz, image).resolve()
        if overlay in photos:
            raise UsageError(
                f"--viz {viz} would write the overlay {overlay} over the --images file of that "
                f"name; expected a folder apart from the images"
            )


def _ground_truth(prompt: BoxPrompt, image: Image.Image, source: str) -> np.ndarray | None:
    """``(N, H, W)`` bool ground-truth masks of a prompt from an instances JSON, or None when
    some box has no segmentation."""
    from deepmac.data.coco import decode_segmentations
    from deepmac.evaluation.results import check_segmentation

    if not prompt.segmentations or any(s is None for s in prompt.segmentations):
        return None
    for k, segmentation in enumerate(prompt.segmentations):
        check_segmentation(segmentation, f"{source}: image {prompt.image_id} annotation {k}")
    return decode_segmentations(prompt.segmentations, image.height, image.width).numpy()


def _labels(names: list[str], scores: Array | list[float]) -> list[str]:
    """``"dog 0.93"``: each class name with its score."""
    return [f"{n} {float(s):.2f}" for n, s in zip(names, scores, strict=True)]


def run_predict(args: argparse.Namespace) -> int:
    from deepmac.engine.devices import resolve_device
    from deepmac.inference.checkpoints import load_model_checkpoint
    from deepmac.inference.prompts import assign_image_ids
    from deepmac.models.families import get_family

    # Everything that can be checked is, before the first image: results are written last.
    _check_arguments(args)
    device = resolve_device(args.device)
    check_output_file(args.out, "--out", {"the --boxes file": args.boxes})
    viz = check_output_folder(args.viz, "--viz") if args.viz else None
    images = collect_images(args.images, recursive=args.recursive)
    _check_outputs_spare_inputs(args, images, viz)
    ckpt = load_model_checkpoint(args.checkpoint)
    if args.boxes is None and not get_family(ckpt["model_type"]).detector:
        raise UsageError("a box-prompted model needs --boxes (COCO instances or results JSON, CSV)")
    boxes_file = _read_boxes(args, images) if args.boxes is not None else None
    if boxes_file is not None:
        image_ids, categories = boxes_file.image_ids, boxes_file.categories
    else:
        model_cfg = ckpt["config"]["model"]
        image_ids = assign_image_ids([image.name for image in images], {})
        categories = [
            {"id": int(c), "name": n}
            for c, n in zip(model_cfg["category_ids"], model_cfg["class_names"], strict=True)
        ]
    output = _Output(args, categories)
    if viz is not None:
        viz.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if boxes_file is None:
        _predict_detections(args, ckpt, device, images, image_ids, output, viz)
    else:
        _predict_prompts(args, ckpt, device, images, boxes_file, output, viz)
    output.write(args.out)
    elapsed = time.perf_counter() - start
    print(
        f"{output.count} masks for {len(images)} images in {elapsed:.1f} s "
        f"({1e3 * elapsed / max(len(images), 1):.0f} ms per image) -> {args.out} "
        f"({args.format}{', ' + args.segmentation if args.format == 'instances' else ''})"
    )
    return 0


def _read_boxes(args: argparse.Namespace, images: list[ImageFile]):
    """The ``BoxPrompts`` of ``--boxes`` for the images, their frames checked against the
    images and a wrong ``--box-format`` warned about."""
    from deepmac.data.images import check_frame
    from deepmac.inference.prompts import (
        default_box_format,
        load_box_prompts,
        warn_if_wrong_box_format,
    )

    box_format = args.box_format or default_box_format(args.boxes)
    boxes_file = load_box_prompts(args.boxes, [i.name for i in images], box_format=box_format)
    frames = {image.name: image for image in images}
    for name, prompt in boxes_file.prompts.items():
        if prompt.frame is not None:
            image = frames[name]
            check_frame(prompt.frame, image.displayed, image.stored, image.path, args.boxes)
    drawn_on = {n: p.frame or frames[n].displayed for n, p in boxes_file.prompts.items()}
    warn_if_wrong_box_format(boxes_file.prompts, drawn_on, str(args.boxes), box_format)
    return boxes_file


def _progress(args: argparse.Namespace, images: list[ImageFile]):
    from deepmac.engine.progress import progress_bar

    return progress_bar(images, desc="predict", enabled=not args.no_progress, unit="img")


def _predict_detections(args, ckpt, device, images, image_ids, output, viz) -> None:
    """A detector's own instances of every image."""
    from deepmac.data.images import open_image
    from deepmac.inference.checkpoints import build_from_checkpoint
    from deepmac.models.families import get_family
    from deepmac.visualization import draw_instances

    predictor_class = get_family(ckpt["model_type"]).load("predictor")
    predictor = build_from_checkpoint(
        predictor_class.from_checkpoint, ckpt, args.checkpoint, device=device, amp=args.amp
    )
    predictor.score_threshold = args.score_threshold
    for image_file in _progress(args, images):
        image = open_image(image_file.path)  # as displayed (EXIF orientation applied)
        image_id = image_ids[image_file.name]
        output.add_image(image_id, image_file, image.height, image.width)
        inst = predictor.predict(image, mask_threshold=args.mask_threshold)
        output.add(image_id, inst.boxes, inst.scores, inst.category_ids, inst.masks)
        if viz is not None:
            labels = _labels(inst.names, inst.scores.tolist())
            _save(draw_instances(image, inst.masks, inst.boxes, labels), viz, image_file)


def _predict_prompts(args, ckpt, device, images, boxes_file, output, viz) -> None:
    """Masks at the boxes of ``--boxes``, any family (every mask branch takes box prompts)."""
    from deepmac.data.images import read_image
    from deepmac.inference.checkpoints import build_from_checkpoint
    from deepmac.inference.segmenter import BoxPromptedSegmenter

    segmenter = build_from_checkpoint(
        BoxPromptedSegmenter.from_checkpoint, ckpt, args.checkpoint, device=device, amp=args.amp
    )
    without = [image.name for image in images if image.name not in boxes_file.prompts]
    if without:
        logger.warning(
            "%d of %d image(s) have no boxes in %s (e.g. %s): %s",
            len(without),
            len(images),
            args.boxes,
            ", ".join(without[:3]),
            "listed without annotations" if args.format == "instances" else "skipped",
        )
    for image_file in _progress(args, images):
        prompt = boxes_file.prompts.get(image_file.name)
        image_id = boxes_file.image_ids[image_file.name]
        crowd = boxes_file.crowd.get(image_file.name, [])
        if prompt is None:
            height, width = image_file.displayed
            output.add_image(image_id, image_file, height, width, crowd)
            continue
        # The frame the boxes were drawn in: an instances JSON's width and height pick it as
        # for a dataset; otherwise the image as displayed.
        pixels = read_image(image_file.path, frame=prompt.frame, source=str(args.boxes))
        height, width = pixels.shape[:2]
        output.add_image(image_id, image_file, height, width, crowd)
        # The one check and clip of the file's boxes (empty ones skipped with a warning).
        prompt = prompt.valid(height, width, source=str(args.boxes))
        if len(prompt.boxes) == 0:
            continue
        segmenter.set_image(pixels)
        masks, mask_scores = _segment_in_chunks(args, segmenter, prompt, output, viz is not None)
        if viz is not None:
            overlay = _prompt_overlay(args, boxes_file, prompt, pixels, masks, mask_scores)
            _save(overlay, viz, image_file)


def _segment_in_chunks(args, segmenter, prompt, output, keep: bool):
    """Masks of the prompt's boxes on the segmenter's image, encoded into ``output`` chunk by
    chunk and dropped: a 24-megapixel image holds 24 MB per mask, so memory stays that of one
    chunk whatever the number of boxes. With ``keep`` (``--viz``, which draws every mask of the
    image at once) the masks and their scores are returned too."""
    height, width = segmenter.image_size
    kept_masks, kept_scores = [], []
    chunk = max(1, MASK_PIXELS_PER_CHUNK // (height * width))
    for first in range(0, len(prompt.boxes), chunk):
        part = slice(first, first + chunk)
        masks, mask_scores = segmenter.predict_clipped(
            prompt.boxes[part], mask_threshold=args.mask_threshold
        )
        # A box's own score (a detector's) where the file gives one, else the mask's.
        given = prompt.scores[part].numpy()
        scores = np.where(np.isnan(given), mask_scores, given)
        output.add(prompt.image_id, prompt.boxes[part], scores, prompt.category_ids[part], masks)
        if keep:
            kept_masks.append(masks)
            kept_scores.append(mask_scores)
        del masks
    if not keep:
        return None, None
    return np.concatenate(kept_masks), np.concatenate(kept_scores)


def _prompt_overlay(args, boxes_file, prompt, pixels, masks, mask_scores) -> Image.Image:
    """The ``--viz`` picture of one image's prompts: ground truth beside the prediction when
    the boxes file is an instances JSON with masks, else the prediction."""
    from deepmac.visualization import draw_comparison, draw_instances

    image = Image.fromarray(pixels)
    gt = _ground_truth(prompt, image, str(args.boxes)) if boxes_file.ground_truth else None
    if gt is None:
        labels = _labels(prompt.labels, mask_scores)
        return draw_instances(image, masks, prompt.boxes, labels, title="prediction")
    return draw_comparison(image, gt, masks, prompt.boxes, prompt.labels, mask_scores)


def _overlay_path(viz: Path, image_file: ImageFile) -> Path:
    """``VIZ/NAME.png``, keeping the image's subfolders (names are unique, files too)."""
    return viz / f"{image_file.name.rsplit('.', 1)[0]}.png"


def _save(overlay: Image.Image, viz: Path, image_file: ImageFile) -> None:
    path = _overlay_path(viz, image_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay.save(path)
