"""Deep-MAC CPU inference split into its stages, and training images/s.

Stages of one image (batch 1, eval mode, mask head BN folded as the predictors run it):
backbone (normalise + trunk), heads (CenterNet heatmap / size / offset and the two embedding
nets on the last stack), decode (peaks, top-K boxes), mask branch (crop + coordinates +
instance embedding + head + sigmoid at the K boxes), paste (K masks into a 640x480 image).
Training: optimizer steps of random-init models on real images when ``../shared/data`` is
there (synthetic boxes otherwise), images per second after one warm-up step.

Usage:
    python benchmarks/deepmac_speed.py [--models cpu hg104] [--repeats 5] [--threads 2] [--amp bf16]
        [--train-steps 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from timing import time_ms

from deepmac.config import ModelConfig
from deepmac.engine.precision import AMP_DTYPES, autocast
from deepmac.engine.train import default_forward_step
from deepmac.mask_heads import fuse_for_inference
from deepmac.models import EmbeddingFeatures
from deepmac.models.centernet.decode import decode_detections
from deepmac.models.deepmac import DeepMACCriterion
from deepmac.models.families import build_model
from deepmac.models.instances import InstanceSampler
from deepmac.structures.masks import paste_masks_in_image

#: name -> (backbone, mask head, input side, training batch): the CPU preset and the official
#: 512x512 configuration (``deepmac_cpu``, ``deepmac_hg104_512``).
MODELS = {
    "cpu": ("efficientnet_lite0", "hourglass20", 384, 4),
    "hg104": ("hourglass104", "hourglass52", 512, 2),
}


def stage_times(model, size: int, repeats: int, amp) -> dict[str, float]:
    image = torch.rand(1, 3, size, size) * 255
    model.eval()
    with torch.inference_mode(), autocast("cpu", amp):
        outputs = model.backbone(model.normalize(image))
        stack, features = len(outputs) - 1, outputs[-1]
        heat = model.heatmap_heads[stack](features)
        box_size, offset = model.size_heads[stack](features), model.offset_heads[stack](features)
        pixel, instance = model.pixel_heads[stack](features), model.instance_heads[stack](features)
        embeddings = EmbeddingFeatures.from_maps(pixel, instance, (size, size))
        (det,) = decode_detections(heat, box_size, offset, stride=4, k=model.max_detections)
        boxes = det.boxes.float()

        def heads():
            model.heatmap_heads[stack](features)
            model.size_heads[stack](features)
            model.offset_heads[stack](features)
            model.pixel_heads[stack](features), model.instance_heads[stack](features)

        def mask_branch():
            model.mask_branch(embeddings, boxes).float().sigmoid()

        probs = model.mask_branch(embeddings, boxes).float().sigmoid()
        scaled = boxes * torch.tensor([640 / size, 480 / size] * 2)
        times = {
            "backbone": time_ms(lambda: model.backbone(model.normalize(image)), repeats=repeats),
            "heads": time_ms(heads, repeats=repeats),
            "decode": time_ms(
                lambda: decode_detections(heat, box_size, offset, k=model.max_detections),
                repeats=repeats,
            ),
            "mask branch": time_ms(mask_branch, repeats=repeats),
            "paste": time_ms(
                lambda: paste_masks_in_image(probs[:, 0], scaled, (480, 640)), repeats=repeats
            ),
            "whole forward": time_ms(lambda: model(image), repeats=repeats),
        }
    return times


def training_batches(size: int, batch: int, steps: int):
    """Batches of real images (shared COCO subsets) or, without them, synthetic ones."""
    from deepmac.data import CocoInstances, build_train_transforms
    from deepmac.data.collate import collate_instances

    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_mini"
    if root.is_dir():
        ds = CocoInstances(
            root, "train2017", mask_split="voc", transforms=build_train_transforms(size)
        )
        items = [ds[i % len(ds)] for i in range(batch * steps)]
    else:
        items = []
        for _ in range(batch * steps):
            boxes = torch.tensor([[20.0, 30.0, 200.0, 220.0], [100.0, 50.0, 300.0, 330.0]])
            masks = torch.zeros(2, size, size, dtype=torch.bool)
            masks[0, 30:220, 20:200] = masks[1, 50:330, 100:300] = True
            target = {
                "boxes": boxes,
                "labels": torch.tensor([0, 1]),
                "gt_masks": masks,
                "has_mask": torch.tensor([True, False]),
                "size": (size, size),
            }
            items.append((torch.rand(3, size, size) * 255, target))
    return [
        collate_instances(items[i : i + batch], size_divisibility=32)
        for i in range(0, len(items), batch)
    ]


def train_images_per_s(cfg: ModelConfig, size: int, batch: int, steps: int, amp) -> float:
    torch.manual_seed(0)
    model = build_model(cfg, instance_sampler=InstanceSampler(max_instances=24)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = DeepMACCriterion(num_classes=cfg.num_classes, mask_loss_weight=5.0)
    batches = training_batches(size, batch, steps + 1)
    elapsed = 0.0
    for index, batch_data in enumerate(batches):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = sum(default_forward_step(model, criterion, batch_data).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index:  # the first step pays one-off allocations
            elapsed += time.perf_counter() - start
    return batch * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", default="none", choices=sorted(AMP_DTYPES))
    parser.add_argument("--train-steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    amp = AMP_DTYPES[args.amp]
    stages = ["backbone", "heads", "decode", "mask branch", "paste", "whole forward"]
    print(f"CPU, {args.threads} threads, amp={args.amp}, median of {args.repeats}; ms per image")
    print("| model | input | " + " | ".join(stages) + " | train img/s (batch) |")
    print("|---" * (len(stages) + 3) + "|")
    for name in args.models:
        backbone, head, size, batch = MODELS[name]
        cfg = ModelConfig(type="deepmac", backbone=backbone, mask_head=head)
        torch.manual_seed(0)
        model = build_model(cfg)
        model.mask_branch.head = fuse_for_inference(model.mask_branch.head)
        times = stage_times(model, size, args.repeats, amp)
        del model
        train = train_images_per_s(cfg, size, batch, args.train_steps, amp)
        print(
            f"| {backbone} + {head} | {size} | "
            + " | ".join(f"{times[s]:.0f}" if times[s] >= 10 else f"{times[s]:.1f}" for s in stages)
            + f" | {train:.2f} ({batch}) |"
        )


if __name__ == "__main__":
    main()
