"""Training speed: images/s of the CPU presets' real training loop, variants side by side.

Each variant is one subprocess that runs ``deepmac.experiments.training.run_training``
(data loading, augmentation, forward, backward, optimizer: everything a training step pays) for
``2 * --steps`` steps on the shared COCO subsets and reports the images/s of the second half
(the first half warms up allocators and oneDNN kernels). Variants:

* ``reference``: the code of another checkout (``--reference PATH``, e.g. a ``git worktree`` at
  an older commit) with its own preset, to measure a speed-up in one run on one machine;
* the preset as it is now with ``train.mask_head_instances`` = ``--modes`` (default ``all``
  and ``supervised``) and, for box-prompted and Deep-MAC, ``model.freeze_at`` = ``--freeze``
  (default 0, 2 and 5: nothing, the stem and stride-4 stage, the whole EfficientNet trunk;
  Deep-MAC: 0 and 2).

Every variant runs ``--repeats`` times, interleaved, and the best run counts (the machine is a
shared VM: the best of several is the least disturbed). The FLOPs of one training step
(``torch.utils.flop_counter``, forward + backward, on a batch of the same data) give each
variant's share of the machine's bf16 and fp32 matmul peak, measured in the same run.

Usage:
    python benchmarks/train_speed.py [--presets box_prompted_cpu deepmac_cpu deepmarc_cpu]
        [--steps 10] [--repeats 2] [--reference ../ref] [--data ../shared/data] [--out FILE]
        [--modes all supervised] [--freeze 0 2 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def training_roots(data: Path) -> list[str]:
    """The Table 4 training sets: coco_tiny and coco_mini train2017, coco_tiny val2017."""
    return [str(data / "coco_tiny"), str(data / "coco_mini"), f"{data / 'coco_tiny'}@val2017"]


def worker(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    sys.path.insert(0, str(Path(args.code).resolve()))
    import torch

    from deepmac.config import apply_overrides

    try:
        from deepmac.config.presets import get_preset
        from deepmac.experiments.training import run_training
    except ImportError:  # a --reference checkout from before the packages (599167f)
        from deepmac.experiment import run_training
        from deepmac.presets import get_preset

    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset)
    cfg.data.roots = training_roots(Path(args.data))
    cfg.data.val_root = str(Path(args.data) / "coco_mini")
    cfg.model.backbone_init = "imagenet"
    cfg.train.steps = 2 * args.steps
    cfg.train.warmup_steps = 1
    cfg.train.log_every = args.steps
    cfg.train.checkpoint_every = 0
    cfg.train.eval_every = 0
    apply_overrides(cfg, args.overrides)
    with tempfile.TemporaryDirectory() as out:
        run_training(cfg, out, progress=False)
        lines = Path(out, "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
    measured = [r for r in records if r.get("type") == "train"][-1]
    import deepmac

    result = {
        "images_per_s": measured["images_per_s"],
        "batch_size": cfg.data.batch_size,
        "code": str(Path(deepmac.__file__).resolve().parents[1]),
    }
    if args.flops:
        result["gflops_per_image"] = step_gflops(cfg) / cfg.data.batch_size
    print("RESULT " + json.dumps(result), flush=True)


def step_gflops(cfg, batches: int = 4) -> float:
    """Forward + backward GFLOPs of one training step, the mean over the first ``batches``
    batches of the data (the mask head's share varies with the instances per batch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from deepmac.data import build_train_loader, build_train_transforms
    from deepmac.engine.precision import autocast
    from deepmac.engine.train import default_forward_step
    from deepmac.experiments.training import build_training_datasets
    from deepmac.models.families import build_training_model, get_family

    torch.manual_seed(0)
    model = build_training_model(cfg).train()
    datasets = build_training_datasets(cfg, build_train_transforms(cfg.data.image_size))
    loader = build_train_loader(
        datasets, cfg.data.batch_size, 0, 0, size_divisibility=model.size_multiple
    )
    family = get_family(cfg.model.type)
    if family.detector:
        cfg.model.category_ids = list(datasets[0].category_ids)
    criterion = family.criterion(cfg)
    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}
    )
    with counter, autocast("cpu", torch.bfloat16):  # float32 without bf16 kernels: same FLOPs
        for _, batch in zip(range(batches), loader, strict=False):
            sum(default_forward_step(model, criterion, batch).values()).backward()
    return counter.get_total_flops() / 1e9 / batches


def conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs):
    """FLOPs of a convolution's backward, grouped convolutions included: the input and the
    weight gradient each cost what the forward costs (``2 * out elements * C_in / groups * k^2``
    multiply-adds). ``torch.utils.flop_counter``'s own formula ignores ``groups`` for the
    weight gradient and counts a depthwise convolution's as a dense one's (C times too many).
    Non-transposed convolutions only (none of the models here has a transposed one)."""
    output_mask = args[-1] if args else kwargs["output_mask"]
    forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def compiled_head_comparison(threads: int, boxes: int = 16, repeats: int = 5) -> dict:
    """Hourglass-20 mask head forward + backward (bf16 autocast, ``boxes`` crops of 32 x 32):
    eager against ``torch.compile(dynamic=True)``, with the compile time."""
    import torch

    from deepmac.mask_heads import build_mask_head

    torch.set_num_threads(threads)
    head = build_mask_head("hourglass20", 50, num_init_channels=64, mask_size=32).train()
    crops = torch.randn(boxes, 50, 32, 32)

    def step(module) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(crops)
        out.float().sum().backward()

    start = time.perf_counter()
    compiled = torch.compile(head, dynamic=True)
    step(compiled)
    compile_s = time.perf_counter() - start
    times = {"eager": [], "compiled": []}
    for _ in range(repeats):
        for name, module in (("eager", head), ("compiled", compiled)):
            start = time.perf_counter()
            step(module)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {"compile_s": compile_s, **{f"{k}_ms": min(v) for k, v in times.items()}}


def matmul_peak_gflops(dtype_name: str, threads: int, size: int = 4096) -> float:
    """GFLOP/s of a large square matmul: the machine's practical peak for ``dtype``."""
    import torch

    torch.set_num_threads(threads)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def run_variant(
    args: argparse.Namespace, code: Path, preset: str, overrides: list[str], flops: bool
) -> dict:
    """One measurement in a fresh process running the deepmac of ``code``."""
    cmd = [
        sys.executable, __file__, "--worker", "--code", str(code), "--preset", preset,
        "--steps", str(args.steps), "--threads", str(args.threads), "--data", str(args.data),
    ]  # fmt: skip
    if flops:
        cmd.append("--flops")
    env = dict(os.environ, PYTHONPATH=str(code))
    proc = subprocess.run(cmd + overrides, capture_output=True, text=True, env=env, cwd=code)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    sys.stderr.write(proc.stderr[-3000:])
    raise SystemExit(f"variant {preset} {overrides} at {code} failed (exit {proc.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets", nargs="+", default=["box_prompted_cpu", "deepmac_cpu", "deepmarc_cpu"]
    )
    parser.add_argument("--steps", type=int, default=10, help="measured (and warm-up) steps")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", type=Path, help="another checkout to compare with")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--modes", nargs="+", default=["all", "supervised"],
                        help="train.mask_head_instances values to measure")  # fmt: skip
    parser.add_argument("--freeze", nargs="+", type=int, default=[0, 2, 5],
                        help="model.freeze_at values to measure (Deep-MAC: at most 2)")  # fmt: skip
    parser.add_argument(
        "--compile-head",
        action="store_true",
        help="also time the mask head eager vs torch.compile (minutes of compiling)",
    )
    # Internal: one measurement in a subprocess.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code", default=str(REPO), help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not (args.data / "coco_tiny").is_dir():
        print(f"skipping: the shared COCO subsets are not at {args.data}")
        return

    import torch

    from deepmac.engine.precision import cpu_has_kernels

    # Without bf16 kernels the presets train in float32 (deepmac.engine.precision), and an
    # emulated 4096^2 bf16 matmul would take minutes: no bf16 peak then.
    dtypes = ("bf16", "fp32") if cpu_has_kernels(torch.bfloat16) else ("fp32",)
    peaks = {name: matmul_peak_gflops(name, args.threads) for name in dtypes}
    print(f"matmul peak ({args.threads} threads, {torch.backends.cpu.get_cpu_capability()}): "
          + ", ".join(f"{name} {peak:.0f} GFLOP/s" for name, peak in peaks.items())
          + ("" if "bf16" in peaks else " (no bf16 kernels: the presets train in float32)"),
          flush=True)  # fmt: skip
    variants = []  # (label, code, preset, overrides)
    for preset in args.presets:
        if args.reference is not None and preset == "box_prompted_cpu":
            variants.append((f"{preset} @ reference", args.reference, preset, []))
        # Deep-MARC freezes its trunk's first stages with rcnn.freeze_at (2 in its preset);
        # Deep-MAC's detection heads are measured with the trunk's first stages frozen at most.
        freeze = {
            "box_prompted_cpu": tuple(args.freeze),
            "deepmac_cpu": tuple(f for f in args.freeze if f <= 2),
        }.get(preset, (None,))
        for mode in args.modes:
            for freeze_at in freeze:
                overrides = [f"train.mask_head_instances={mode}"]
                label = f"{preset} {mode}"
                if freeze_at is not None:
                    overrides.append(f"model.freeze_at={freeze_at}")
                    label += f" freeze_at={freeze_at}"
                variants.append((label, REPO, preset, overrides))
    results: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for label, code, preset, overrides in variants:
            first = repeat == 0 and code == REPO
            figures = run_variant(args, code, preset, overrides, flops=first)
            best = results.setdefault(label, {"runs": [], **figures})
            best["runs"].append(figures["images_per_s"])
            print(f"  {label}: {figures['images_per_s']:.2f} img/s", flush=True)
    print("\n| variant | images/s (best) | runs | speed-up | GFLOP/image | % bf16 peak "
          "| % fp32 peak |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for label, code, preset, _ in variants:
        row = results[label]
        row["images_per_s_best"] = speed = max(row["runs"])
        # Speed-up against the reference code's run of this preset, else its first row.
        base_label = f"{preset} @ reference"
        first_row = next(v[0] for v in variants if v[2] == preset and v[1] == REPO)
        base = max(results.get(base_label, results[first_row])["runs"])
        row["speedup"] = speed / base
        if code != REPO:  # the reference trains the same network as "all", nothing frozen
            same = results.get(f"{preset} all freeze_at=0", {})
            row["gflops_per_image"] = same.get("gflops_per_image")
        gflops = row.get("gflops_per_image")
        shares = ["-", "-"]
        if gflops:
            shares = [f"{100 * speed * gflops / peaks[d]:.1f}" if d in peaks else "-"
                      for d in ("bf16", "fp32")]  # fmt: skip
        runs = ", ".join(f"{r:.2f}" for r in row["runs"])
        gf = f"{gflops:.1f}" if gflops else "-"
        print(f"| {label} | {speed:.2f} | {runs} | {speed / base:.2f}x | {gf} | "
              f"{shares[0]} | {shares[1]} |")  # fmt: skip
    report = {"peaks_gflops": peaks, "variants": results}
    if args.compile_head:
        report["compiled_head"] = head = compiled_head_comparison(args.threads)
        print(
            f"\nhourglass20 head fwd+bwd, 16 crops: eager {head['eager_ms']:.0f} ms, compiled "
            f"{head['compiled_ms']:.0f} ms ({head['eager_ms'] / head['compiled_ms']:.2f}x), "
            f"compile {head['compile_s']:.0f} s"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
