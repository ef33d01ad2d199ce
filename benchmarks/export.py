"""onnxruntime vs PyTorch CPU latency of exported deepmac graphs, in one process.

For the box-prompted graph: ms per image (the graph with 1 box, mostly backbone) and ms per
extra box (slope between 1 and ``--boxes`` boxes). For Deep-MAC: ms per image (detect + top-K
masks). For Deep-MARC (the ``deepmarc_cpu`` architecture; random weights with the score
threshold at 0, so that both runtimes segment the full ``max_detections`` boxes, the load of a
COCO evaluation): ms per image. PyTorch runs the same wrapper the file was exported from
(mask head BN folded, float32), so the two columns are the same computation. Timings
alternate between the two runtimes, so a disturbance of the machine hits both.

Usage:
    python benchmarks/export.py [--backbone efficientnet_lite0] [--head hourglass20]
        [--size 384] [--boxes 32] [--repeats 10] [--threads 2] [--checkpoint OUT/last.pt]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from deepmac.config import ModelConfig
from deepmac.config.presets import get_preset
from deepmac.export import export_onnx, onnx_wrapper
from deepmac.export.onnx import random_boxes
from deepmac.inference.checkpoints import model_from_checkpoint
from deepmac.mask_heads import fuse_for_inference
from deepmac.models.families import build_model


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def compare(name: str, model, size: int, feeds_list: list[dict], repeats: int, threads: int):
    """Median ms of PyTorch and onnxruntime for each feed dict, alternating."""
    import onnxruntime as ort

    prompt = "boxes" in feeds_list[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "m.onnx", image_size=size, prompt=prompt)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wrapper, _, _ = onnx_wrapper(model, prompt=prompt)
    rows = []
    for feeds in feeds_list:
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def run_torch(tensors=tensors):
            with torch.inference_mode():
                wrapper(*tensors.values())

        def run_ort(feeds=feeds):
            session.run(None, feeds)

        run_torch(), run_ort()  # warm-up
        torch_ms, ort_ms = [], []
        for _ in range(repeats):
            torch_ms.append(median_ms(run_torch, 1))
            ort_ms.append(median_ms(run_ort, 1))
        rows.append((statistics.median(torch_ms), statistics.median(ort_ms)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--head", default="hourglass20")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--boxes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", help="use a trained checkpoint instead of random init")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        model, cfg = model_from_checkpoint(args.checkpoint)
        size, models = cfg.data.image_size, {cfg.model.type: model}
    else:
        size, models = args.size, {}
        for model_type in ("box_prompted", "deepmac", "deepmarc"):
            torch.manual_seed(0)
            if model_type == "deepmarc":
                cfg = get_preset("deepmarc_cpu").model
                cfg.rcnn.score_threshold = 0.0
            else:
                cfg = ModelConfig(type=model_type, backbone=args.backbone, mask_head=args.head)
            model = build_model(cfg).eval()
            model.mask_branch.head = fuse_for_inference(model.mask_branch.head)
            models[model_type] = model

    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, size, size, generator=generator) * 255).numpy()
    print(
        f"{args.backbone} + {args.head}, {size}x{size}, {args.threads} threads, "
        f"median of {args.repeats}"
    )
    print("| graph | PyTorch ms | onnxruntime ms | ORT / PyTorch |")
    print("|---|---|---|---|")
    for model_type, model in models.items():
        if model_type in ("deepmac", "deepmarc"):
            content = torch.tensor([size, size], dtype=torch.float32).numpy()
            ((pt, ort),) = compare(
                model_type,
                model,
                size,
                [{"image": image, "content_size": content}],
                args.repeats,
                args.threads,
            )
            detections = (
                getattr(model, "max_detections", None) or model.roi_heads.detections_per_image
            )
            label = "Deep-MAC" if model_type == "deepmac" else "Deep-MARC (deepmarc_cpu)"
            print(
                f"| {label}, per image ({detections} masks) | {pt:.1f} "
                f"| {ort:.1f} | {ort / pt:.2f} |"
            )
        if model_type in ("box_prompted", "deepmac"):
            feeds = [
                {"image": image, "boxes": random_boxes(n, size, generator).numpy()}
                for n in (1, args.boxes)
            ]
            (pt1, ort1), (ptn, ortn) = compare(
                model_type, model, size, feeds, args.repeats, args.threads
            )
            per_box_pt = (ptn - pt1) / (args.boxes - 1)
            per_box_ort = (ortn - ort1) / (args.boxes - 1)
            label = "box-prompted" if model_type == "box_prompted" else "Deep-MAC --prompt"
            print(f"| {label}, per image (1 box) | {pt1:.1f} | {ort1:.1f} | {ort1 / pt1:.2f} |")
            print(
                f"| {label}, per extra box | {per_box_pt:.2f} | {per_box_ort:.2f} "
                f"| {per_box_ort / per_box_pt:.2f} |"
            )


if __name__ == "__main__":
    main()
