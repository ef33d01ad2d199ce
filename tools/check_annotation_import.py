"""Import a ``deepmac predict --format instances`` file with the importers of CVAT and Label
Studio, and say what they read back.

CVAT imports "COCO 1.0" through Datumaro's ``coco_instances`` importer; Label Studio imports
COCO through ``label-studio-converter``'s ``convert_coco_to_ls``. Neither is a deepmac
dependency: run this from a side environment that has them, e.g.

    python -m venv ../venv_tools && ../venv_tools/bin/pip install datumaro label-studio-converter
    ../venv_tools/bin/python tools/check_annotation_import.py instances.json --images photos/

It prints, per importer, what it read: Datumaro's images and annotations, with the IoU between
the masks it decodes (polygons and RLE) and the file's own (pycocotools), matched by annotation
id; Label Studio's tasks and regions by type.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_util


def coco_masks(instances: dict) -> dict[int, np.ndarray]:
    """``annotation id -> mask`` of the file itself (crowd regions left out)."""
    images = {image["id"]: image for image in instances["images"]}
    masks = {}
    for ann in instances["annotations"]:
        if ann.get("iscrowd"):
            continue
        image = images[ann["image_id"]]
        h, w = image["height"], image["width"]
        seg = ann["segmentation"]
        if isinstance(seg, dict) and isinstance(seg["counts"], str):  # compressed RLE
            rle = {"size": seg["size"], "counts": seg["counts"].encode()}
        else:
            rle = mask_util.frPyObjects(seg, h, w)
            rle = mask_util.merge(rle) if isinstance(rle, list) else rle
        masks[ann["id"]] = mask_util.decode(rle).astype(bool)
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def check_datumaro(ann_file: Path, images: Path, expected: dict) -> None:
    import datumaro as dm

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "annotations").mkdir()
        shutil.copy(ann_file, root / "annotations" / "instances_default.json")
        shutil.copytree(images, root / "images" / "default")
        dataset = dm.Dataset.import_from(str(root), "coco_instances")
        # One annotation may come back as several polygons: merged by annotation id, which
        # Datumaro keeps from the file.
        merged: dict[int, np.ndarray] = {}
        shapes = 0
        for item in dataset:
            h, w = item.media.size
            for ann in item.annotations:
                if ann.type == dm.AnnotationType.polygon:
                    rle = mask_util.frPyObjects([ann.points], h, w)
                    mask = mask_util.decode(mask_util.merge(rle)).astype(bool)
                elif ann.type == dm.AnnotationType.mask:
                    mask = ann.image.astype(bool)
                else:
                    continue
                if ann.attributes.get("is_crowd"):
                    continue
                shapes += 1
                merged[ann.id] = merged[ann.id] | mask if ann.id in merged else mask
        scores = [iou(mask, expected[k]) for k, mask in merged.items() if k in expected]
        missing = len(expected.keys() - merged.keys())
        summary = (
            f"mean mask IoU with the file {np.mean(scores):.4f}, min {np.min(scores):.4f}"
            if scores
            else "no mask to compare"
        )
        print(
            f"CVAT (Datumaro coco_instances {dm.__version__}): {len(dataset)} images, "
            f"{len(merged)} annotations ({shapes} shapes), {missing} of the file's missing; "
            f"{summary}"
        )


def check_label_studio(ann_file: Path, expected: dict) -> None:
    from label_studio_converter.imports.coco import convert_coco_to_ls

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tasks.json"
        convert_coco_to_ls(str(ann_file), str(out), image_root_url="/data/local-files/?d=")
        tasks = json.loads(out.read_text())
        results = [r for t in tasks for a in t.get("annotations", []) for r in a["result"]]
        kinds: dict[str, int] = {}
        for result in results:
            kinds[result["type"]] = kinds.get(result["type"], 0) + 1
        listed = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        print(
            f"Label Studio (label-studio-converter convert_coco_to_ls): {len(tasks)} tasks, "
            f"regions: {listed or 'none'} (the file has {len(expected)} instances)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("instances", type=Path, help="deepmac predict --format instances output")
    parser.add_argument("--images", type=Path, required=True, help="the images folder")
    args = parser.parse_args()
    instances = json.loads(args.instances.read_text())
    expected = coco_masks(instances)
    print(f"{args.instances}: {len(instances['images'])} images, {len(expected)} instances")
    check_datumaro(args.instances, args.images, expected)
    try:
        check_label_studio(args.instances, expected)
    except Exception as err:  # the converter's own failure is the finding to report
        print(f"Label Studio (label-studio-converter): failed, {type(err).__name__}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
