#!/usr/bin/env python
"""Verify converted weights against the official TensorFlow code and print the parity table.

Runs every check of ``deepmac.convert.parity`` (each one builds the official TF model with random
weights and statistics, converts its checkpoint with ``deepmac convert-tf``'s code path and
compares outputs) and prints a Markdown table of max absolute differences and bounds. Exit status
1 if any bounded row fails.

Needs, in one Python environment: TensorFlow (CPU is enough) with tf-keras, tf-models-official
(Deep-MARC), torch and deepmac, and the Object Detection API files (see
../shared/tools/tfref/README.md for a set-up). Example:

    /work/tfvenv/bin/python tools/verify_tf_parity.py --models-dir ../tf_od_api \\
        --out-json parity.json

The whole-model check uses one image of a COCO-style folder (default: the first val2017 image of
../shared/data/coco_mini, resized to --image-size square) and its ground-truth boxes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COCO = REPO_ROOT.parent / "shared" / "data" / "coco_mini"
SUITES = ("crop", "conventions", "deepmac_heads", "deepmarc_heads", "deepmac_model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models-dir",
        help="folder holding research/object_detection or "
        "object_detection/ (default $DEEPMAC_TF_MODELS_DIR, then ../tf_od_api)",
    )
    p.add_argument("--suites", default=",".join(SUITES), help=f"comma list of {', '.join(SUITES)}")
    p.add_argument("--heads", help="comma list of Deep-MAC heads (default: all 13)")
    p.add_argument(
        "--coco-root",
        default=str(DEFAULT_COCO),
        help="COCO-style folder with annotations/instances_val2017.json and val2017/",
    )
    p.add_argument("--image-size", type=int, default=512, help="whole-model input side (512)")
    p.add_argument("--mask-head", default="hourglass52", help="whole-model mask head")
    p.add_argument("--no-saved-model", action="store_true", help="skip the SavedModel export")
    p.add_argument("--workdir", help="where the TF checkpoint/SavedModel go (default: a temp dir)")
    p.add_argument("--out-json", help="also write the rows as JSON here")
    p.add_argument(
        "--manifest-out",
        help="also write the official models' variable names and "
        "shapes (gzipped JSON; the fixture of tests/test_convert.py) here",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load_image(coco_root: Path, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The first val2017 image of ``coco_root``, resized to ``size x size`` (parity does not need
    the aspect ratio; both models get the same pixels), and its GT boxes (xyxy, resized frame)."""
    from PIL import Image

    data = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    info = sorted(data["images"], key=lambda im: im["file_name"])[0]
    anns = [a for a in data["annotations"] if a["image_id"] == info["id"] and not a["iscrowd"]]
    with Image.open(coco_root / "val2017" / info["file_name"]) as im:
        pixels = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    scale = np.array([size / info["width"], size / info["height"]] * 2, np.float32)
    boxes = (
        np.array(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32
        ).reshape(-1, 4)
        * scale
    )
    return pixels, boxes, info["file_name"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from deepmac.convert import parity

    parity.prepare_tensorflow(args.models_dir)  # before TensorFlow is imported
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        raise SystemExit(f"unknown suites {unknown}; valid: {', '.join(SUITES)}")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows, start = [], time.perf_counter()
    manifest: dict | None = {} if args.manifest_out else None
    if "crop" in suites:
        log("crop_and_resize")
        rows += parity.check_crop_and_resize(models_dir=args.models_dir, seed=args.seed)
    if "conventions" in suites:
        rows += parity.check_conventions(seed=args.seed)
    if "deepmac_heads" in suites:
        log("Deep-MAC heads")
        heads = args.heads.split(",") if args.heads else parity.DEEPMAC_HEAD_NAMES
        rows += parity.check_deepmac_heads(
            heads, models_dir=args.models_dir, seed=args.seed, log=log, manifest=manifest
        )
    if "deepmarc_heads" in suites:
        log("Deep-MARC heads")
        rows += parity.check_deepmarc_heads(seed=args.seed, log=log, manifest=manifest)
    if "deepmac_model" in suites:
        image, boxes, name = load_image(Path(args.coco_root), args.image_size)
        log(
            f"whole Deep-MAC on {name} ({len(boxes)} GT boxes), {args.image_size}x{args.image_size}"
        )
        rows += parity.check_deepmac_model(
            models_dir=args.models_dir,
            image=image,
            boxes=boxes,
            image_size=args.image_size,
            mask_head=args.mask_head,
            saved_model=not args.no_saved_model,
            workdir=args.workdir,
            seed=args.seed,
            log=log,
            manifest=manifest,
        )
    print(parity.environment_line(args.models_dir))
    print()
    print(parity.format_table(rows))
    failed = [r.component for r in rows if not r.passed]
    print(
        f"\n{len(rows)} rows, {sum(r.bound is not None for r in rows)} bounded, "
        f"{len(failed)} failed, {time.perf_counter() - start:.0f} s"
    )
    if manifest is not None:
        Path(args.manifest_out).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(manifest, separators=(",", ":"), sort_keys=True)
        with gzip.GzipFile(args.manifest_out, "wb", mtime=0) as f:  # mtime 0: same bytes
            f.write(text.encode())
    if args.out_json:
        Path(args.out_json).write_text(json.dumps([r.__dict__ for r in rows], indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
