"""GPU check: training, evaluation and prediction on CUDA, and the paper's Deep-MAC latency.

1. Training: ``--steps`` (20) optimizer steps of each of ``box_prompted_cpu``, ``deepmac_cpu``
   and ``deepmarc_cpu`` under bf16 and under fp16 autocast, on ``../shared/data/coco_tiny``
   (``train.device=cuda``, random backbone init: the ImageNet weights are an optional
   package), with the engine's periodic evaluation at the last step (``evaluate_model`` on
   the CUDA model). Reported: steps/s after the first step, whether every logged loss is
   finite, the last loss.
2. Evaluation and prediction from each run's checkpoint with the predictors on
   ``device="cuda"`` and the run's autocast: ``deepmac.evaluation.evaluate`` on ``--eval-images``
   val2017 images (detection AP for the detectors, mIoU from ground-truth boxes for all),
   ms per image of ``predict``, and the largest difference between the CPU's and the GPU's
   box-prompted mask probabilities (float32 both, TF32 off, same boxes).
3. Latency of Deep-MAC with Hourglass-104 at 1024 x 1024 and the Hourglass-100 head
   (``deepmac_hg104_1024``, random weights, eval mode, 100 detections per image), per
   autocast: median ms of ``--repeats`` after warm-up, synchronised, for the model's forward
   on a CUDA image and for ``DeepMACPredictor.predict`` of a 640 x 480 image (resize, forward,
   100 masks pasted, copied back). Paper: 232 ms on a V100.

Without CUDA it prints "no CUDA device: skipping" and exits 0. Exit status 1 when a check
failed (its error is in the table and in ``--out``/gpu_check.json).

Usage:
    python benchmarks/gpu_check.py [--data ../shared/data] [--steps 20] [--eval-images 4]
        [--repeats 20] [--out runs/gpu_check]
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmac.config.presets import get_preset
from deepmac.data import CocoInstances
from deepmac.engine import read_metrics
from deepmac.engine.precision import amp_dtype, autocast
from deepmac.evaluation.evaluate import evaluate_box_prompted, evaluate_deepmac
from deepmac.experiments.training import run_training
from deepmac.inference.detector import DeepMACPredictor
from deepmac.inference.segmenter import BoxPromptedSegmenter
from deepmac.mask_heads import fuse_for_inference
from deepmac.models.families import build_model
from deepmac.utils.io import write_json_atomic

TRAINING_PRESETS = ("box_prompted_cpu", "deepmac_cpu", "deepmarc_cpu")
AMPS = ("bf16", "fp16")
LATENCY_PRESET = "deepmac_hg104_1024"
PAPER_MS = 232  # the paper's Deep-MAC HG-104 @1024 on a V100


def failure(err: BaseException) -> str:
    """One line for the table: the exception and the innermost deepmac frame."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "deepmac" in f.filename]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}{where}"


def cuda_ms(fn: Callable[[], object], *, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn()``, each call between two ``torch.cuda.synchronize``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def train_one(preset: str, amp: str, args: argparse.Namespace) -> dict[str, Any]:
    """``args.steps`` steps of ``preset`` on CUDA under ``amp``; steps/s and loss figures."""
    cfg = get_preset(preset)
    tiny = args.data / "coco_tiny"
    cfg.data.roots = [str(tiny)]
    cfg.data.val_root = str(tiny)
    cfg.model.backbone_init = None
    cfg.train.device = "cuda"
    cfg.train.amp = amp
    cfg.train.steps = args.steps
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 0  # only the final checkpoint
    cfg.train.eval_every = args.steps  # the engine's evaluation of the CUDA model, once
    cfg.eval.max_images = args.eval_images
    run_dir = args.out / f"{preset}_{amp}"
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl is appended to, not replaced
    summary = run_training(cfg, run_dir, progress=False)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("type") == "train"]
    losses = [v for r in records for k, v in r.items() if k.startswith("loss")]
    # From the end of step 1: the first step pays cuDNN's algorithm search and allocations.
    first, last = records[0], records[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    steps_per_s = (last["step"] - first["step"]) / seconds if seconds > 0 else float("nan")
    return {
        "steps": summary["step"],
        "steps_per_s": steps_per_s,
        "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "last_loss": records[-1]["loss"],
        "train_eval": summary["eval"],
        "checkpoint": str(run_dir / "last.pt"),
        "model_type": cfg.model.type,
    }


def check_masks(masks: torch.Tensor, count: int, image_size: tuple[int, int]) -> None:
    """Predicted masks come back as the CPU predictors return them: ``(count, H, W)`` bool."""
    if masks.device.type != "cpu" or masks.dtype != torch.bool:
        raise AssertionError(
            f"masks must come back bool on the CPU, got {masks.dtype} on {masks.device}"
        )
    if tuple(masks.shape) != (count, *image_size):
        raise AssertionError(f"masks must be {(count, *image_size)}, got {tuple(masks.shape)}")


def eval_and_predict(run: dict[str, Any], amp: str, val: CocoInstances, n: int) -> dict[str, Any]:
    """The run's checkpoint through ``deepmac.evaluation.evaluate`` and the predictors on CUDA."""
    ckpt = run["checkpoint"]
    seg = BoxPromptedSegmenter.from_checkpoint(ckpt, device="cuda", amp=amp)
    if seg.device.type != "cuda":
        raise AssertionError(f"the segmenter must run on cuda, runs on {seg.device}")
    metrics, _ = evaluate_box_prompted(seg, val, max_images=n)
    out: dict[str, Any] = {"mIoU": metrics["mask_iou/all/mIoU"]}
    times = []
    for index in range(min(n, len(val))):
        image, target = val[index]
        start = time.perf_counter()
        masks = (
            seg.predict(image, target["boxes"], return_numpy=False)[0]
            if len(target["boxes"])
            else None
        )
        times.append(time.perf_counter() - start)
        if masks is not None:
            check_masks(masks, len(target["boxes"]), tuple(image.shape[-2:]))
    out["prompted_ms"] = 1e3 * statistics.median(times)
    if run["model_type"] != "box_prompted":
        predictor = DeepMACPredictor.from_checkpoint(ckpt, device="cuda", amp=amp)
        metrics, _ = evaluate_deepmac(predictor, val, max_images=n)
        out["segm_AP"] = metrics["segm/all/AP"]
        times = []
        for index in range(min(n, len(val))):
            image = val.load_image(index)
            start = time.perf_counter()
            inst = predictor.predict(image)
            times.append(time.perf_counter() - start)
            check_masks(inst.masks, len(inst.boxes), tuple(image.shape[-2:]))
            if inst.boxes.device.type != "cpu":
                raise AssertionError(f"boxes must come back on the CPU, got {inst.boxes.device}")
        out["detect_ms"] = 1e3 * statistics.median(times)
    return out


def cpu_gpu_difference(ckpt: str, val: CocoInstances) -> float:
    """Largest |p_cpu - p_cuda| of box-prompted mask probabilities on the first image with
    boxes, both in float32 (TF32 convolutions off): float rounding gives ~1e-5, a
    device-specific bug far more."""
    for index in range(len(val)):
        image, target = val[index]
        if len(target["boxes"]):
            break
    probs = []
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        for device in ("cpu", "cuda"):
            seg = BoxPromptedSegmenter.from_checkpoint(ckpt, device=device)
            seg.set_image(image)
            probs.append(seg.predict_probs(target["boxes"]))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return float((probs[0] - probs[1]).abs().max())


def latency_model() -> tuple[torch.nn.Module, int]:
    """Deep-MAC HG-104 + Hourglass-100 of ``LATENCY_PRESET``, random weights, its mask head
    folded as ``load_model`` runs it, on CUDA; and its input side."""
    cfg = get_preset(LATENCY_PRESET)
    cfg.model.backbone_init = None
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    model.mask_branch.head = fuse_for_inference(model.mask_branch.head)
    return model.cuda(), cfg.data.image_size


def latency(model: torch.nn.Module, size: int, amp: str, repeats: int) -> dict[str, float]:
    """ms per image of ``model`` (eval, 100 detections) under ``amp`` on CUDA."""
    predictor = DeepMACPredictor(
        model,
        image_size=size,
        category_ids=list(range(1, model.num_classes + 1)),
        class_names=[f"c{i}" for i in range(model.num_classes)],
        amp=amp,
    )
    image = torch.rand(1, 3, size, size, device="cuda") * 255
    dtype = amp_dtype(amp)

    def forward() -> None:
        with torch.no_grad(), autocast("cuda", dtype):
            model(image, image_sizes=[(size, size)])

    with torch.no_grad():
        out = model(image, image_sizes=[(size, size)])
    photo = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return {
        "boxes": sum(len(d.boxes) for d in out.detections),
        "forward_ms": cuda_ms(forward, warmup=3, repeats=repeats),
        "predict_ms": cuda_ms(lambda: predictor.predict(photo), warmup=3, repeats=repeats),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[1].parent / "shared" / "data",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: skipping")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}",
        flush=True,
    )
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "runs": {}, "latency": {}}
    failed = False

    tiny = args.data / "coco_tiny"
    if (tiny / "annotations").is_dir():
        val = CocoInstances(tiny, "val2017", mask_split="voc")
        rows = []
        for preset in TRAINING_PRESETS:
            for amp in AMPS:
                name = f"{preset} {amp}"
                print(f"training {name} ...", flush=True)
                entry: dict[str, Any] = {}
                try:
                    entry.update(train_one(preset, amp, args))
                    entry.update(eval_and_predict(entry, amp, val, args.eval_images))
                    if amp == AMPS[0]:
                        entry["cpu_cuda_max_dp"] = cpu_gpu_difference(entry["checkpoint"], val)
                    if not entry["losses_finite"]:
                        raise AssertionError("a logged loss is not finite")
                except Exception as err:  # one failed check must not hide the others
                    entry["error"] = failure(err)
                    failed = True
                report["runs"][name] = entry
                rows.append((name, entry))
                torch.cuda.empty_cache()
        print(
            f"\n{args.steps} training steps on {tiny} (batch 4, 384 px), then eval / predict on "
            f"{args.eval_images} val2017 images on cuda"
        )
        print(
            "| run | steps/s | losses finite | last loss | mIoU (GT boxes) | mask AP | "
            "prompted ms/img | detect ms/img | cpu vs cuda max abs dp | error |"
        )
        print("|---" * 10 + "|")
        for name, e in rows:
            cells = [
                f"{e['steps_per_s']:.2f}" if "steps_per_s" in e else "-",
                str(e.get("losses_finite", "-")),
                f"{e['last_loss']:.3f}" if "last_loss" in e else "-",
                f"{e['mIoU']:.3f}" if "mIoU" in e else "-",
                f"{e['segm_AP']:.3f}" if "segm_AP" in e else "-",
                f"{e['prompted_ms']:.0f}" if "prompted_ms" in e else "-",
                f"{e['detect_ms']:.0f}" if "detect_ms" in e else "-",
                f"{e['cpu_cuda_max_dp']:.1e}" if "cpu_cuda_max_dp" in e else "-",
                e.get("error", ""),
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
    else:
        print(f"no COCO data at {tiny}: training, eval and predict checks skipped")
        report["skipped"] = f"training, eval and predict: no data at {tiny}"
        failed = True

    # cuDNN's autotuning, as TensorFlow (the paper's timing) does by default.
    torch.backends.cudnn.benchmark = True
    print(
        f"\nDeep-MAC HG-104 @1024 + Hourglass-100 ({LATENCY_PRESET}, random weights, eval, "
        f"median of {args.repeats} after 3 warm-up, cudnn.benchmark); paper: {PAPER_MS} ms on "
        f"a V100"
    )
    print("| amp | boxes | forward ms/image | predict ms/image (640x480) | error |")
    print("|---|---|---|---|---|")
    amps: tuple[str, ...] = ("none", *AMPS)
    try:
        model, size = latency_model()
    except Exception as err:
        amps = ()
        report["latency"]["build"] = {"error": failure(err)}
        failed = True
        print(f"| - | - | - | - | {failure(err)} |")
    for amp in amps:
        try:
            figures = latency(model, size, amp, args.repeats)
            report["latency"][amp] = figures
            print(
                f"| {amp} | {figures['boxes']} | {figures['forward_ms']:.1f} | "
                f"{figures['predict_ms']:.1f} | |"
            )
        except Exception as err:
            report["latency"][amp] = {"error": failure(err)}
            failed = True
            print(f"| {amp} | - | - | - | {failure(err)} |")
        torch.cuda.empty_cache()
    write_json_atomic(args.out / "gpu_check.json", report)
    print(f"\nwrote {args.out / 'gpu_check.json'}; {'FAILED' if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
