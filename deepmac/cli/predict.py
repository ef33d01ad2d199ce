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
    from deepmac.data.images import check_frame, open_image, read_image
    from deepmac.engine.devices import resolve_device
    from deepmac.engine.progress import progress_bar
    from deepmac.inference.checkpoints import build_from_checkpoint, load_model_checkpoint
    from deepmac.inference.detector import DeepMACPredictor
    from deepmac.inference.prompts import assign_image_ids, default_box_format, load_box_prompts
    from deepmac.inference.segmenter import BoxPromptedSegmenter
    from deepmac.models.families import get_family
    from deepmac.visualization import draw_comparison, draw_instances

    # Everything that can be checked is, before the first image: results are written last.
    _check_arguments(args)
    device = resolve_device(args.device)
    check_output_file(args.out, "--out", {"the --boxes file": args.boxes})
    viz = check_output_folder(args.viz, "--viz") if args.viz else None
    images = collect_images(args.images, recursive=args.recursive)
    _check_outputs_spare_inputs(args, images, viz)
    names = [image.name for image in images]
    ckpt = load_model_checkpoint(args.checkpoint)
    if args.boxes is None and not get_family(ckpt["model_type"]).detector:
        raise UsageError("a box-prompted model needs --boxes (COCO instances or results JSON, CSV)")
    boxes_file = None
    if args.boxes is not None:
        from deepmac.inference.prompts import warn_if_wrong_box_format

        box_format = args.box_format or default_box_format(args.boxes)
        boxes_file = load_box_prompts(args.boxes, names, box_format=box_format)
        frames = {image.name: image for image in images}
        for name, prompt in boxes_file.prompts.items():
            if prompt.frame is not None:
                image = frames[name]
                check_frame(prompt.frame, image.displayed, image.stored, image.path, args.boxes)
        drawn_on = {n: p.frame or frames[n].displayed for n, p in boxes_file.prompts.items()}
        warn_if_wrong_box_format(boxes_file.prompts, drawn_on, str(args.boxes), box_format)
        image_ids, categories = boxes_file.image_ids, boxes_file.categories
    else:
        model_cfg = ckpt["config"]["model"]
        image_ids = assign_image_ids(names, {})
        categories = [
            {"id": int(c), "name": n}
            for c, n in zip(model_cfg["category_ids"], model_cfg["class_names"], strict=True)
        ]
    output = _Output(args, categories)
    if viz is not None:
        viz.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    progress = dict(desc="predict", enabled=not args.no_progress, unit="img")
    if boxes_file is None:
        predictor = build_from_checkpoint(
            DeepMACPredictor.from_checkpoint, ckpt, args.checkpoint, device=device, amp=args.amp
        )
        predictor.score_threshold = args.score_threshold
        for image_file in progress_bar(images, **progress):
            image = open_image(image_file.path)  # as displayed (EXIF orientation applied)
            image_id = image_ids[image_file.name]
            output.add_image(image_id, image_file, image.height, image.width)
            inst = predictor.predict(image, mask_threshold=args.mask_threshold)
            output.add(image_id, inst.boxes, inst.scores, inst.category_ids, inst.masks)
            if viz is not None:
                overlay = draw_instances(
                    image, inst.masks, inst.boxes, _labels(inst.names, inst.scores.tolist())
                )
                _save(overlay, viz, image_file)
    else:
        # Any model with a mask branch takes box prompts, Deep-MAC included.
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
        for image_file in progress_bar(images, **progress):
            prompt = boxes_file.prompts.get(image_file.name)
            image_id = image_ids[image_file.name]
            crowd = boxes_file.crowd.get(image_file.name, [])
            if prompt is None:
                height, width = image_file.displayed
                output.add_image(image_id, image_file, height, width, crowd)
                continue
            # The frame the boxes were drawn in: an instances JSON's width and height pick it
            # as for a dataset; otherwise the image as displayed.
            pixels = read_image(image_file.path, frame=prompt.frame, source=str(args.boxes))
            image = Image.fromarray(pixels)
            output.add_image(image_id, image_file, image.height, image.width, crowd)
            prompt = prompt.valid(image.height, image.width, source=str(args.boxes))
            if len(prompt.boxes) == 0:
                continue
            # The boxes go through in chunks whose masks are encoded into the output and
            # dropped before the next chunk: a 24-megapixel image holds 24 MB per mask, so
            # memory stays that of one chunk whatever the number of boxes (--viz, which draws
            # every mask of the image at once, keeps them).
            segmenter.set_image(image)
            kept_masks, kept_scores = [], []
            chunk = max(1, MASK_PIXELS_PER_CHUNK // (image.height * image.width))
            for first in range(0, len(prompt.boxes), chunk):
                part = slice(first, first + chunk)
                # Checked and clipped once, by prompt.valid above.
                masks, mask_scores = segmenter.predict_clipped(
                    prompt.boxes[part], mask_threshold=args.mask_threshold
                )
                # A box's own score (a detector's) where the file gives one, else the mask's.
                given = prompt.scores[part].numpy()
                scores = np.where(np.isnan(given), mask_scores, given)
                output.add(
                    prompt.image_id, prompt.boxes[part], scores, prompt.category_ids[part], masks
                )
                if viz is not None:
                    kept_masks.append(masks)
                    kept_scores.append(mask_scores)
                del masks
            if viz is not None:
                masks, mask_scores = np.concatenate(kept_masks), np.concatenate(kept_scores)
                gt = (
                    _ground_truth(prompt, image, str(args.boxes))
                    if boxes_file.ground_truth
                    else None
                )
                labels = _labels(prompt.labels, mask_scores)
                if gt is None:
                    overlay = draw_instances(image, masks, prompt.boxes, labels, title="prediction")
                else:
                    overlay = draw_comparison(
                        image, gt, masks, prompt.boxes, prompt.labels, mask_scores
                    )
                _save(overlay, viz, image_file)
    output.write(args.out)
    elapsed = time.perf_counter() - start
    print(
        f"{output.count} masks for {len(images)} images in {elapsed:.1f} s "
        f"({1e3 * elapsed / max(len(images), 1):.0f} ms per image) -> {args.out} "
        f"({args.format}{', ' + args.segmentation if args.format == 'instances' else ''})"
    )
    return 0


def _overlay_path(viz: Path, image_file: ImageFile) -> Path:
    """``VIZ/NAME.png``, keeping the image's subfolders (names are unique, files too)."""
    return viz / f"{image_file.name.rsplit('.', 1)[0]}.png"


def _save(overlay: Image.Image, viz: Path, image_file: ImageFile) -> None:
    path = _overlay_path(viz, image_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay.save(path)
