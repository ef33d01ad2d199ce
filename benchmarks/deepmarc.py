"""CPU speed of Deep-MARC: inference ms per image split by stage, and training images/s.

Inference (``--sizes``, ``--heads``; ResNet-50-FPN by default, random weights, fp32, eval mode,
batch 1, square input): median milliseconds of each stage run on the previous stage's cached
output, so the split is exact and the stages add up to the end-to-end time:

* ``backbone``: trunk + FPN (P2-P6);
* ``rpn``: RPN head on all levels + proposal selection (top-k, decode, NMS per level);
* ``box``: RoIAlign 7x7 of the proposals + 2-FC box head + per-class decoding and NMS;
* ``mask``: RoIAlign at the detections + mask head (BatchNorms folded, channels_last, as
  ``load_model`` runs it).

Random weights give flat class scores, almost none above the 0.05 threshold. To time the
post-processing and the mask head under a trained model's load, the threshold is set so that
``--candidates`` (class, proposal) pairs (default 2000, 2 per proposal) enter the per-class NMS;
that leaves the full ``max_detections`` (100) boxes per image, the load of a COCO evaluation.
The number of proposals after NMS is reported (untrained RPN deltas are near zero, so the NMS
sees anchors).

Training (``--train-presets``): images/s of full optimizer steps (forward, backward, Adam/SGD
step, the preset's autocast) on one fixed batch of ``--data-root`` for each
``mask_train_boxes`` setting, after warm-up steps. Example::

    python benchmarks/deepmarc.py --threads 2 --sizes 512 1024 --out runs/deepmarc_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from timing import time_ms

from deepmac.config import ModelConfig, RCNNConfig
from deepmac.mask_heads import fuse_for_inference
from deepmac.models.deepmarc.roi_heads import flatten_boxes
from deepmac.models.families import build_model

HEADS = {  # name -> (crop side, width): the paper's / Model Garden's settings
    "deepmarc_default": (14, 256),
    "deepmarc_hourglass20": (16, 64),
    "deepmarc_hourglass52": (32, 64),
}
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def inference_row(
    backbone: str, head: str, size: int, repeats: int, candidates: int
) -> dict[str, float]:
    crop, width = HEADS[head]
    cfg = ModelConfig(
        type="deepmarc",
        backbone=backbone,
        mask_head=head,
        mask_size=crop,
        num_init_channels=width,
        rcnn=RCNNConfig(),
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    model.mask_branch.head = fuse_for_inference(model.mask_branch.head)
    images = torch.rand(1, 3, size, size) * 255
    sizes = [(size, size)]
    with torch.inference_mode():
        features = model.features(images)
        proposals, _ = model.rpn(features, sizes)
        # Emulate a trained classifier's load on the per-class NMS: a score threshold that lets
        # exactly ``candidates`` (class, proposal) pairs through.
        rois, roi_index = flatten_boxes([p.boxes for p in proposals])
        logits, _ = model.roi_heads.predict(features, rois, roi_index)
        scores = logits.float().softmax(dim=1)[:, :-1].flatten()
        model.roi_heads.score_threshold = float(scores.topk(candidates + 1).values[-1])
        detections = model.roi_heads.inference(features, proposals, sizes)
        boxes, index = flatten_boxes([d.boxes for d in detections])
        row = {
            "backbone": backbone,
            "head": head,
            "size": size,
            "proposals": len(proposals[0].boxes),
            "detections": len(boxes),
            "backbone_ms": time_ms(lambda: model.features(images), warmup=1, repeats=repeats),
            "rpn_ms": time_ms(lambda: model.rpn(features, sizes), warmup=1, repeats=repeats),
            "box_ms": time_ms(
                lambda: model.roi_heads.inference(features, proposals, sizes),
                warmup=1,
                repeats=repeats,
            ),
            "mask_ms": time_ms(
                lambda: model.mask_branch(features, boxes, index), warmup=1, repeats=repeats
            ),
        }
    row["total_ms"] = row["backbone_ms"] + row["rpn_ms"] + row["box_ms"] + row["mask_ms"]
    return row


def training_row(preset: str, mode: str, data_root: Path, steps: int) -> dict[str, float]:
    from deepmac.config.presets import get_preset
    from deepmac.data import CocoInstances, build_train_transforms, collate_instances
    from deepmac.engine.precision import amp_dtype
    from deepmac.engine.train import default_forward_step
    from deepmac.models.families import build_training_model, get_family

    cfg = get_preset(preset)
    cfg.model.mask_train_boxes = mode
    torch.manual_seed(0)
    model = build_training_model(cfg).train()
    dataset = CocoInstances(
        data_root, "train2017", transforms=build_train_transforms(cfg.data.image_size)
    )
    batch = collate_instances(
        [dataset[i] for i in range(cfg.data.batch_size)], size_divisibility=model.size_multiple
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    criterion = get_family(cfg.model.type).criterion(cfg)
    dtype = amp_dtype(cfg.train.amp)

    def one_step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            losses = default_forward_step(model, criterion, batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    ms = time_ms(one_step, warmup=2, repeats=steps)
    return {
        "preset": preset,
        "mask_train_boxes": mode,
        "image_size": cfg.data.image_size,
        "batch": cfg.data.batch_size,
        "amp": cfg.train.amp,
        "step_ms": ms,
        "images_per_s": cfg.data.batch_size / (ms / 1e3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--heads", nargs="+", default=["deepmarc_default", "deepmarc_hourglass52"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per stage (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--candidates", type=int, default=2000, help="(class, proposal) pairs entering the NMS"
    )
    parser.add_argument("--train-presets", nargs="*", default=["deepmarc_cpu"])
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA / "coco_tiny")
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cpus")
    started = time.perf_counter()
    inference = []
    header = (
        f"{'backbone':9s} {'head':21s} {'size':>4s} {'props':>5s} {'dets':>4s} "
        f"{'backbone':>9s} {'rpn':>7s} {'box':>7s} {'mask':>7s} {'total':>8s}  (ms / image)"
    )
    print(header)
    for size in args.sizes:
        for head in args.heads:
            r = inference_row(args.backbone, head, size, args.repeats, args.candidates)
            inference.append(r)
            print(
                f"{r['backbone']:9s} {r['head']:21s} {r['size']:4d} {r['proposals']:5d} "
                f"{r['detections']:4d} {r['backbone_ms']:9.0f} {r['rpn_ms']:7.0f} "
                f"{r['box_ms']:7.0f} {r['mask_ms']:7.0f} {r['total_ms']:8.0f}",
                flush=True,
            )
    training = []
    if args.train_presets:
        if not (args.data_root / "annotations").is_dir():
            print(f"no training data at {args.data_root}: training rows skipped", file=sys.stderr)
        else:
            print(f"\n{'preset':14s} {'mask_train_boxes':16s} {'size':>4s} {'batch':>5s} "
                  f"{'amp':>4s} {'ms/step':>8s} {'img/s':>6s}")  # fmt: skip
            for preset in args.train_presets:
                for mode in ("gt", "proposals+gt"):
                    r = training_row(preset, mode, args.data_root, args.train_steps)
                    training.append(r)
                    print(
                        f"{r['preset']:14s} {r['mask_train_boxes']:16s} {r['image_size']:4d} "
                        f"{r['batch']:5d} {r['amp']:>4s} {r['step_ms']:8.0f} "
                        f"{r['images_per_s']:6.2f}",
                        flush=True,
                    )
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"threads": args.threads, "inference": inference, "training": training}
        args.out.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
