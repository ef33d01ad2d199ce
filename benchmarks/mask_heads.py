"""CPU speed of the mask-head zoo vs the official TF heads (``tf_heads.json``).

For each head and batch: parameters, GFLOP (2 x multiply-adds of conv/deconv/linear layers,
counted with forward hooks), and median milliseconds of

* ``fwd``: eval-mode forward under ``torch.inference_mode`` (plain NCHW module);
* ``fwd+bwd``: train-mode forward + backward of ``(logits * g).sum()``;
* ``infer``: ``fuse_for_inference`` copy (BN folded into convs, channels_last), fp32;
* ``bf16``: the fused copy under CPU ``autocast(bfloat16)``, with ``max|dp|`` the largest
  absolute difference of sigmoid probabilities from the fp32 eval output;
* ``TF``: ``ms_per_batch_median`` of the same head, crop and batch in ``tf_heads.json``
  (measured with 2 threads, fp32, ``training=False``, ``tf.function``), and ``infer/TF``.

Deep-MAC heads get ``(B, 50, 32, 32)`` crops; Deep-MARC heads ``(B, 256, S, S)`` RoI features
(``--marc-crop``). Example::

    python benchmarks/mask_heads.py --heads hourglass20 resnet4 --batch 64 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from timing import time_ms
from torch import Tensor, nn

from deepmac.mask_heads import MASK_HEADS, build_mask_head, count_params, fuse_for_inference

TF_JSON = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "tf_heads.json"


def count_flops(module: nn.Module, features: Tensor) -> int:
    """FLOPs (2 x MACs) of the conv, transposed-conv and linear layers for one forward."""
    total = 0

    def hook(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
            total += 2 * output.numel() * k
        elif isinstance(layer, nn.ConvTranspose2d):
            k = layer.kernel_size[0] * layer.kernel_size[1] * layer.out_channels // layer.groups
            total += 2 * inputs[0].numel() * k
        elif isinstance(layer, nn.Linear):
            total += 2 * output.numel() * layer.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    with torch.inference_mode():
        module(features)
    for handle in handles:
        handle.remove()
    return total


def bench_head(name: str, batch: int, args: argparse.Namespace, tf: dict) -> dict:
    """All measurements of one head at one batch size."""
    marc = name.startswith("deepmarc")
    channels, crop = (256, args.marc_crop) if marc else (50, 32)
    torch.manual_seed(0)
    head = build_mask_head(name, channels, mask_size=crop)
    x = torch.randn(batch, channels, crop, crop)
    row = {
        "head": name,
        "batch": batch,
        "params": count_params(head),
        "gflop": count_flops(head.eval(), x[:1]) * batch / 1e9,
    }
    tf_key = f"{'deepmarc' if marc else 'deepmac'}/{name.removeprefix('deepmarc_')}"
    row["tf_ms"] = tf.get(f"{tf_key}@{crop}x{crop}/b{batch}", {}).get("ms_per_batch_median")
    run = {"warmup": args.warmup, "repeats": args.repeats}
    with torch.inference_mode():
        row["fwd_ms"] = time_ms(lambda: head(x), **run)
        reference = torch.sigmoid(head(x))
        fused = fuse_for_inference(head)
        row["infer_ms"] = time_ms(lambda: fused(x), **run)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            row["bf16_ms"] = time_ms(lambda: fused(x), **run)
            probs = torch.sigmoid(fused(x).float())
        row["bf16_dp"] = (probs - reference).abs().max().item()
    if not args.no_train:
        head.train()
        grad = torch.randn_like(reference)

        def step() -> None:
            head.zero_grad(set_to_none=True)
            (head(x) * grad).sum().backward()

        row["train_ms"] = time_ms(step, **run)
    return row


def format_row(row: dict) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    ratio = "-" if row["tf_ms"] is None else f"{row['infer_ms'] / row['tf_ms']:.2f}"
    return (
        f"{row['head']:<28} {row['batch']:>4} {row['params']:>11,} {row['gflop']:>7.1f} "
        f"{ms(row['fwd_ms']):>7} {ms(row.get('train_ms')):>8} {ms(row['infer_ms']):>7} "
        f"{ms(row['bf16_ms']):>6} {row['bf16_dp']:>8.1e} {ms(row['tf_ms']):>7} {ratio:>8}"
    )


def _no_mmap_env() -> dict[str, str]:
    """Environment that keeps freed activations in the heap instead of unmapping them.

    glibc mmaps every block above 32 MiB (a (64, 128, 32, 32) fp32 activation is 33.5 MiB) and
    unmaps it on free, so each forward page-faults its activations in again; PyTorch has no CPU
    caching allocator to hide that. This is a process-level allocator setting, not a model change.
    """
    return {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def main() -> None:
    default_heads = [n for n, e in MASK_HEADS.items() if not e.param_free]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--heads",
        nargs="+",
        default=default_heads,
        choices=sorted(MASK_HEADS),
        metavar="NAME",
        help="heads to time (default: all with parameters)",
    )
    parser.add_argument("--batch", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--marc-crop", type=int, default=32, help="RoI crop side for deepmarc_*")
    parser.add_argument("--no-train", action="store_true", help="skip forward+backward timing")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--glibc-mmap",
        action="store_true",
        help="keep glibc's default of mmap/munmap for every large block (see _no_mmap_env)",
    )
    args = parser.parse_args()
    if not args.glibc_mmap and os.environ.get("MALLOC_MMAP_MAX_") != "0":
        os.execve(sys.executable, [sys.executable, *sys.argv], _no_mmap_env())

    torch.set_num_threads(args.threads)
    tf = json.loads(TF_JSON.read_text()) if TF_JSON.is_file() else {}
    malloc = "glibc default malloc" if args.glibc_mmap else "MALLOC_MMAP_MAX_=0"
    print(
        f"torch {torch.__version__}, {args.threads} threads, float32 unless noted, {malloc}; "
        f"ms = median of {args.repeats}; TF from {TF_JSON.name if tf else '(absent)'}"
    )
    print(
        f"{'head':<28} {'B':>4} {'params':>11} {'GFLOP':>7} {'fwd':>7} {'fwd+bwd':>8} "
        f"{'infer':>7} {'bf16':>6} {'max|dp|':>8} {'TF':>7} {'infer/TF':>8}"
    )
    rows = []
    for name in args.heads:
        for batch in args.batch:
            rows.append(bench_head(name, batch, args, tf))
            print(format_row(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
