"""Deep-MAC: GT boxes to the mask branch in training, detections at test; training steps lower
the loss; images without annotations; train / eval / predict from the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from deepmac.config import ModelConfig
from deepmac.data import CocoInstances, build_eval_transforms, collate_instances, demo_data_root
from deepmac.engine.train import default_forward_step
from deepmac.models.deepmac import DeepMACCriterion
from deepmac.models.families import build_model
from deepmac.models.instances import InstanceSampler

#: Every test here runs on two threads (the machine kind), whatever the session set.
pytestmark = pytest.mark.usefixtures("two_threads")


def tiny_model(num_classes: int = 80):
    cfg = ModelConfig(
        type="deepmac",
        backbone="efficientnet_lite0",
        mask_head="resnet4",
        mask_size=16,
        embedding_head_channels=16,
        num_classes=num_classes,
        max_detections=5,
    )
    return build_model(cfg, instance_sampler=InstanceSampler(max_instances=8))


def tiny_batch(root, split="train2017", count=2, size=64):
    ds = CocoInstances(root, split, mask_split="voc", transforms=build_eval_transforms(size))
    return collate_instances([ds[i] for i in range(count)], size_divisibility=32)


def step_fn():
    """The engine's training step with Deep-MAC's criterion."""
    criterion = DeepMACCriterion(num_classes=80, mask_loss_weight=5.0)
    return lambda model, _, batch: default_forward_step(model, criterion, batch)


def test_mask_branch_gets_gt_boxes_in_training_and_detections_in_eval():
    torch.manual_seed(0)
    model = tiny_model()
    seen = []
    real = model.mask_branch.forward

    def spy(features, boxes, batch_index):
        seen.append(boxes.detach().clone())
        return real(features, boxes, batch_index)

    model.mask_branch.forward = spy
    batch, targets = tiny_batch(demo_data_root())
    gt = torch.cat([t["boxes"] for t in targets])
    model.train()
    out = model(
        batch.tensor,
        gt,
        torch.cat([torch.full((len(t["boxes"]),), b) for b, t in enumerate(targets)]),
    )
    assert torch.equal(seen[-1], gt)
    assert out.mask_logits[-1].shape == (len(gt), 1, 16, 16)
    model.eval()
    with torch.no_grad():
        out = model(batch.tensor, image_sizes=batch.image_sizes)
    detected = torch.cat([d.boxes for d in out.detections])
    assert len(detected) == 2 * 5 and torch.equal(seen[-1], detected)
    assert out.mask_logits[-1].shape == (10, 1, 16, 16)
    with pytest.raises(ValueError, match="ground-truth boxes"):
        model.train()(batch.tensor)


def test_training_steps_lower_the_loss_on_coco_tiny(coco_tiny_root, train_steps):
    torch.manual_seed(0)
    model = tiny_model().train()
    batch, targets = tiny_batch(coco_tiny_root, count=2, size=128)
    losses, totals = train_steps(model, step_fn(), (batch, targets))
    assert set(losses) == {"loss_center", "loss_size", "loss_offset", "loss_mask"}
    assert totals[-1] < 0.7 * totals[0], totals


def test_images_without_annotations_train_without_nan(without_annotations):
    model = tiny_model().train()
    batch, targets = tiny_batch(demo_data_root())
    empty = without_annotations(targets)
    losses = step_fn()(model, None, (batch, empty))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert losses["loss_mask"].item() == 0.0


def test_cli_train_eval_predict(tmp_path):
    from deepmac.cli.main import main

    run = tmp_path / "run"
    tiny = [
        "data.image_size=64", "data.batch_size=2", "data.max_instances=4",
        "model.mask_head=resnet4", "model.mask_size=16", "model.embedding_head_channels=16",
        "model.max_detections=5",
    ]  # fmt: skip
    assert (
        main(["train", "deepmac_cpu", "--out", str(run), "--steps", "2", "--no-progress", *tiny])
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    assert (
        len(config["model"]["category_ids"]) == 80 and config["model"]["class_names"][0] == "person"
    )
    metrics_path = tmp_path / "metrics.json"
    assert (
        main(
            [
                "eval",
                str(run / "last.pt"),
                "--max-images",
                "2",
                "--no-progress",
                "--out",
                str(metrics_path),
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_path.read_text())
    assert 0.0 <= metrics["segm/nonvoc/AP"] <= 1.0 and 0.0 <= metrics["bbox/all/AP"] <= 1.0
    # --gt-boxes scores the mask branch from ground-truth boxes, as the box-prompted model.
    args = ["eval", str(run / "last.pt"), "--gt-boxes", "--max-images", "2", "--no-progress"]
    assert main([*args, "--out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    # The GT boxes are the detections: box AP is exactly 1.
    assert 0.0 < metrics["mask_iou/all/mIoU"] <= 1.0 and metrics["bbox/all/AP"] == 1.0
    out = tmp_path / "dets.json"
    images = demo_data_root() / "val2017"
    args = [
        "predict",
        str(run / "last.pt"),
        "--images",
        str(images),
        "--out",
        str(out),
        "--score-threshold",
        "0",
        "--viz",
        str(tmp_path / "viz"),
    ]
    assert main(args) == 0
    dets = json.loads(out.read_text())
    assert len(dets) == 8 * 5 and all("segmentation" in d for d in dets)
    assert len(list((tmp_path / "viz").glob("*.png"))) == 8
