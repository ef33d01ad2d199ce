"""bf16 autocast against float32 on this CPU: is bf16 worth it here?

Times, in one process, the Hourglass-20 mask head's forward + backward on 16 crops (50
channels, 32 x 32, the ``box_prompted_cpu`` head) and a 1024^2 matmul, in float32 and under
bf16 autocast forced on (``torch.autocast``, not ``deepmac.engine.precision.autocast``, which
would fall back to float32 on a CPU without bf16 kernels). Prints milliseconds and the bf16
speed-up, beside what ``deepmac.engine.precision.cpu_has_kernels`` decides for this CPU: with
AVX512-BF16 or AMX bf16 is faster; with AVX2 only it is emulated and several times slower,
which is why training falls back to float32 there.

Usage:
    python benchmarks/amp_speed.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from deepmac.engine.precision import cpu_has_kernels
from deepmac.mask_heads import build_mask_head


def best_ms(step, dtype: torch.dtype | None, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``step`` (after one warm-up) under autocast to
    ``dtype`` (``None``: float32), in milliseconds."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            step()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = build_mask_head("hourglass20", 50, num_init_channels=64, mask_size=32).train()
    crops = torch.randn(16, 50, 32, 32)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)

    def head_step() -> None:
        head.zero_grad(set_to_none=True)
        head(crops).float().sum().backward()

    capability = torch.backends.cpu.get_cpu_capability()
    print(f"CPU capability {capability}, {args.threads} threads; bf16 kernels: "
          f"{cpu_has_kernels(torch.bfloat16)} (training runs bf16 only with them)")  # fmt: skip
    print("\n| workload | float32 ms | bf16 autocast ms | bf16 speed-up |\n|---|---|---|---|")
    for name, step in (("Hourglass-20 head fwd+bwd, 16 crops", head_step),
                       ("matmul 1024^2", lambda: a @ b)):  # fmt: skip
        fp32 = best_ms(step, None, args.repeats)
        bf16 = best_ms(step, torch.bfloat16, args.repeats)
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} | {fp32 / bf16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
