"""Box-prompted Deep-MAC: mask branch, partial-mask loss, training, resume, predict round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from deepmac.config import apply_overrides
from deepmac.config.presets import get_preset
from deepmac.data import demo_data_root
from deepmac.inference.prompts import load_box_prompts
from deepmac.inference.segmenter import BoxPromptedSegmenter, check_prompt_boxes
from deepmac.models import EmbeddingFeatures, MaskBranch, sample_at_box_centres
from deepmac.models.families import build_model
from deepmac.models.instances import InstanceSampler, select_mask_instances
from deepmac.models.losses import deepmac_mask_loss, sampled_mask_targets

#: Every test here runs on two threads (the machine kind), whatever the session set.
pytestmark = pytest.mark.usefixtures("two_threads")


# ----------------------------------------------------------------------------- mask branch


def test_mask_branch_input_layout_and_output_shape():
    branch = MaskBranch("resnet4", pixel_embedding_dim=16, instance_embedding_dim=32)
    pixel = torch.randn(2, 16, 16, 16)
    instance = torch.randn(2, 32, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 16.0, 40.0, 60.0], [0.0, 0.0, 10.0, 10.0]])
    index = torch.tensor([0, 1, 1])
    features = EmbeddingFeatures.from_maps(pixel, instance, (64, 64))
    inputs = branch.head_inputs(features, boxes, index)
    assert inputs.shape == (3, 50, 32, 32)
    # (y, x) coordinates first, end points included.
    assert inputs[0, 0, 0, 0] == -1 and inputs[0, 0, -1, 0] == 1 and inputs[0, 1, 0, -1] == 1
    # The whole-image crop of a 16x16 map at 32 samples starts and ends on the corner pixels.
    torch.testing.assert_close(inputs[0, 2:18, 0, 0], pixel[0, :, 0, 0])
    torch.testing.assert_close(inputs[0, 2:18, -1, -1], pixel[0, :, -1, -1])
    # Instance embedding last, read at floor(centre / 64 * 16): box 1 centre (24, 38) -> (9, 6).
    torch.testing.assert_close(inputs[1, 18:, 5, 7], instance[1, :, 9, 6])
    assert branch(features, boxes, index).shape == (3, 1, 32, 32)


def test_sample_at_box_centres_floors_and_clamps():
    emb = torch.arange(16.0).view(1, 1, 4, 4)
    boxes = torch.tensor([[0.0, 0.0, 7.9, 7.9], [8.0, 8.0, 16.0, 16.0]])  # centres 3.95 and 12
    out = sample_at_box_centres(emb, boxes, torch.zeros(2, dtype=torch.long), (16, 16))
    # 3.95 / 16 * 4 = 0.99 -> pixel 0; 12 / 16 * 4 = 3 -> pixel 3.
    assert out[:, 0].tolist() == [0.0, 15.0]


def test_mask_branch_switches_and_errors():
    branch = MaskBranch("resnet4", use_xy=False, use_instance_embedding=False)
    assert branch.in_channels == 16
    maps = EmbeddingFeatures.from_maps
    out = branch(maps(torch.randn(1, 16, 8, 8), None, (8, 8)), torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    assert out.shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="16 channels, got 8"):
        branch(maps(torch.randn(1, 8, 8, 8), None, (8, 8)), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="instance_embedding must have 32 channels"):
        MaskBranch("resnet4")(maps(torch.randn(1, 16, 8, 8), None, (8, 8)), torch.zeros(1, 4))


def test_mask_branch_zero_and_one_box_in_training():
    branch = MaskBranch("hourglass52").train()  # its bottleneck is 1x1: BN needs 2 crops
    pixel = torch.randn(1, 16, 8, 8, requires_grad=True)
    instance = torch.randn(1, 32, 8, 8)
    features = EmbeddingFeatures.from_maps(pixel, instance, (32, 32))
    empty = branch(features, torch.zeros(0, 4))
    assert empty.shape == (0, 1, 32, 32)
    one = branch(features, torch.tensor([[2.0, 2.0, 20.0, 30.0]]))
    assert one.shape == (1, 1, 32, 32) and torch.isfinite(one).all()


# ----------------------------------------------------------------------------- loss


def test_mask_loss_ignores_instances_without_masks():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(3, 1, 4, 4, generator=gen, requires_grad=True)]
    targets = torch.rand(3, 4, 4, generator=gen)
    has_mask = torch.tensor([True, False, True])
    loss = deepmac_mask_loss(logits, targets, has_mask)
    changed = targets.clone()
    changed[1] = 1 - changed[1]
    assert loss == deepmac_mask_loss(logits, changed, has_mask)
    loss.backward()
    assert logits[0].grad[1].abs().sum() == 0 and logits[0].grad[0].abs().sum() > 0


def test_mask_loss_hand_value_and_no_supervision():
    # A zero logit costs ln 2 whatever the target; two stacks are averaged.
    logits = [torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)]
    loss = deepmac_mask_loss(logits, torch.rand(2, 3, 3), torch.tensor([True, True]))
    assert loss.item() == pytest.approx(math.log(2))
    nothing = deepmac_mask_loss(
        [torch.randn(2, 1, 3, 3, requires_grad=True)],
        torch.rand(2, 3, 3),
        torch.zeros(2, dtype=torch.bool),
    )
    assert nothing.item() == 0.0
    nothing.backward()  # a graph to back-propagate through, never NaN
    empty = deepmac_mask_loss(
        [torch.zeros(0, 1, 3, 3, requires_grad=True)],
        torch.zeros(0, 3, 3),
        torch.zeros(0, dtype=torch.bool),
    )
    assert empty.item() == 0.0


def sampled(targets, mask_size, max_instances=100, mode="all"):
    """The instances the sampler picks and their mask targets, as the box-prompted criterion
    makes them."""
    inst = InstanceSampler(max_instances, mode)(targets)
    return inst, sampled_mask_targets(inst, targets, MaskBranch.mask_targets, mask_size)


def test_sampled_instances_cap_and_crop_only_masked():
    masks = torch.zeros(5, 20, 20, dtype=torch.bool)
    masks[:, 5:15, 5:15] = True
    target = {
        "boxes": torch.tensor([[5.0, 5.0, 15.0, 15.0]] * 5),
        "gt_masks": masks,
        "has_mask": torch.tensor([True, False, True, False, True]),
    }
    inst, mask_targets = sampled([target, target], mask_size=8, max_instances=3)
    assert inst.boxes.shape == (6, 4) and inst.batch_index.tolist() == [0, 0, 0, 1, 1, 1]
    # Inside the box the target is 1; the edge samples (box edges are sample points, TF
    # convention) straddle the mask border and are soft.
    assert mask_targets[inst.has_mask][:, 1:-1, 1:-1].min() == 1.0
    assert mask_targets[inst.has_mask].min() > 0.5
    assert mask_targets[~inst.has_mask].abs().sum() == 0


def test_cap_keeps_supervised_instances_first():
    has_mask = torch.tensor([False, False, True, False, True, False, False, True])
    for seed in range(5):
        keep = select_mask_instances(
            has_mask, 4, "all", generator=torch.Generator().manual_seed(seed)
        )
        # All three masks survive the cap of 4; one box without a mask fills the last slot.
        assert set(keep.tolist()) >= {2, 4, 7} and len(keep) == 4
        assert keep.tolist() == sorted(keep.tolist())
    keep = select_mask_instances(has_mask, 2, "all", generator=torch.Generator().manual_seed(0))
    assert set(keep.tolist()) < {2, 4, 7} and len(keep) == 2
    assert select_mask_instances(has_mask, 100, "all").tolist() == list(range(8))
    assert select_mask_instances(has_mask, 100, "supervised").tolist() == [2, 4, 7]
    with pytest.raises(ValueError, match="mask_head_instances must be one of all, supervised"):
        select_mask_instances(has_mask, 4, "masked")


def test_supervised_mode_sends_only_masked_instances_to_the_head():
    masks = torch.zeros(5, 20, 20, dtype=torch.bool)
    masks[:, 5:15, 5:15] = True
    target = {
        "boxes": torch.tensor([[5.0, 5.0, 15.0, 15.0]] * 5),
        "gt_masks": masks,
        "has_mask": torch.tensor([True, False, True, False, True]),
    }
    inst, mask_targets = sampled([target], mask_size=8, mode="supervised")
    assert len(inst.boxes) == 3 and bool(inst.has_mask.all())
    full, full_targets = sampled([target], mask_size=8, mode="all")
    # The loss only sees supervised instances, so both modes give it the same targets.
    torch.testing.assert_close(mask_targets, full_targets[full.has_mask])


def test_instance_embedding_at_boxes_equals_the_dense_map():
    model = build_model(get_preset("box_prompted_cpu").model).train()
    features = torch.randn(3, 64, 24, 24, requires_grad=True)
    corners = torch.rand(9, 2) * 80
    boxes = torch.cat([corners, corners + torch.rand(9, 2) * 40 + 1], 1)
    boxes[0] = torch.tensor([0.0, 0.0, 3.0, 3.0])  # centre pixel on the top-left border
    boxes[1] = torch.tensor([90.0, 90.0, 96.0, 96.0])  # ... and on the bottom-right one
    index = torch.randint(0, 3, (9,))
    dense = sample_at_box_centres(model.instance_heads[0](features), boxes, index, (96, 96))
    sparse = model.instance_embedding_at_boxes(0, features, boxes, index, (96, 96))
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-5)
    (grad_dense,) = torch.autograd.grad(dense.sum(), features)
    (grad_sparse,) = torch.autograd.grad(sparse.sum(), features)
    torch.testing.assert_close(grad_sparse, grad_dense, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- predictor input


def test_prompt_boxes_clip_and_reject():
    clipped = check_prompt_boxes([[-10.0, 5.0, 50.0, 200.0]], (100, 40))
    assert clipped.tolist() == [[0.0, 5.0, 40.0, 100.0]]
    with pytest.raises(ValueError, match="no area inside"):
        check_prompt_boxes([[10.0, 10.0, 10.0, 30.0]], (100, 100))
    with pytest.raises(ValueError, match="no area inside"):
        check_prompt_boxes([[200.0, 200.0, 300.0, 300.0]], (100, 100))
    with pytest.raises(ValueError, match="\\(N, 4\\)"):
        check_prompt_boxes([[1.0, 2.0, 3.0]], (100, 100))


def test_load_box_prompts_formats_and_errors(tmp_path):
    ann = demo_data_root() / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    files = [im["file_name"] for im in data["images"]]
    prompts = load_box_prompts(ann, files).prompts
    first = data["images"][0]
    num = sum(1 for a in data["annotations"] if a["image_id"] == first["id"] and not a["iscrowd"])
    assert len(prompts[first["file_name"]].boxes) == num
    results = tmp_path / "dets.json"
    results.write_text(
        json.dumps(
            [{"image_id": first["id"], "bbox": [1, 2, 30, 40], "category_id": 7, "score": 0.5}]
        )
    )
    from_results = load_box_prompts(results, files).prompts
    assert from_results[first["file_name"]].boxes.tolist() == [[1.0, 2.0, 31.0, 42.0]]
    # A subset of the file's images is fine; none of them is not.
    assert list(load_box_prompts(ann, files[:1]).prompts) == files[:1]
    with pytest.raises(ValueError, match="is among the 1 given image"):
        load_box_prompts(ann, ["other.jpg"])
    results.write_text(json.dumps([{"image_id": 1, "bbox": [1, 2, 3]}]))
    with pytest.raises(ValueError, match="\\[x, y, w, h\\]"):
        load_box_prompts(results, files)
    results.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_box_prompts(results, files)


# ----------------------------------------------------------------------------- end to end


def tiny_config(**extra):
    cfg = get_preset("box_prompted_demo")
    apply_overrides(
        cfg,
        [
            "data.image_size=64",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.max_instances=4",
            "model.mask_head=resnet4",
            "model.mask_size=16",
            "model.embedding_head_channels=16",
            "train.warmup_steps=1",
            "train.log_every=1",
            "train.checkpoint_every=0",
            *[f"{k}={v}" for k, v in extra.items()],
        ],
    )
    return cfg


def test_resume_continues_bit_for_bit(tmp_path, monkeypatch):
    from deepmac.experiments import training as experiment

    cfg = tiny_config(**{"train.steps": 4, "train.checkpoint_every": 2})
    experiment.run_training(cfg, tmp_path / "straight", progress=False)

    # The same run, interrupted during step 3 (after the step-2 checkpoint), then resumed.
    from deepmac.models.box_prompted import BoxPromptedCriterion

    real_call = BoxPromptedCriterion.__call__
    calls = {"n": 0}

    def interrupted(self, outputs, targets):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_call(self, outputs, targets)

    monkeypatch.setattr(BoxPromptedCriterion, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run_training(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(BoxPromptedCriterion, "__call__", real_call)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["step"] == 2
    experiment.run_training(cfg, tmp_path / "resumed", resume=True, progress=False)

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_train_predict_round_trip_and_bad_checkpoints(tmp_path):
    from pycocotools.coco import COCO

    from deepmac.cli.main import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "box_prompted_demo",
                "--out",
                str(run),
                "--steps",
                "2",
                "--no-progress",
                "data.image_size=64",
                "data.batch_size=2",
                "data.num_workers=0",
                "data.max_instances=4",
                "model.mask_head=resnet4",
                "model.mask_size=16",
                "model.embedding_head_channels=16",
            ]
        )
        == 0
    )
    assert (run / "last.pt").is_file() and (run / "config.json").is_file()
    assert (run / "metrics.jsonl").read_text().count("loss_mask") >= 1

    root = demo_data_root()
    ann = root / "annotations" / "instances_val2017.json"
    out = tmp_path / "masks.json"
    assert (
        main(
            [
                "predict",
                str(run / "last.pt"),
                "--images",
                str(root / "val2017"),
                "--boxes",
                str(ann),
                "--out",
                str(out),
                "--viz",
                str(tmp_path / "viz"),
            ]
        )
        == 0
    )
    gt = COCO(str(ann))
    dets = gt.loadRes(str(out))
    num_gt = len([a for a in gt.dataset["annotations"] if not a["iscrowd"]])
    assert len(dets.getAnnIds()) == num_gt
    assert len(list((tmp_path / "viz").glob("*.png"))) == len(gt.getImgIds())

    metrics_path = tmp_path / "m.json"
    assert (
        main(
            [
                "eval",
                str(run / "last.pt"),
                "--max-images",
                "2",
                "--out",
                str(metrics_path),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_path.read_text())
    assert 0.0 <= metrics["mask_iou/all/mIoU"] <= 1.0

    seg = BoxPromptedSegmenter.from_checkpoint(run / "last.pt", box_chunk=2)
    image = np.zeros((50, 70, 3), dtype=np.uint8)
    boxes = torch.tensor([[1.0, 1.0, 30.0, 40.0], [10.0, 5.0, 69.0, 49.0], [0.0, 0.0, 70.0, 50.0]])
    chunked, _ = seg.predict(image, boxes, return_numpy=False)
    seg.box_chunk = 256
    assert chunked.shape == (3, 50, 70) and chunked.dtype == torch.bool
    assert torch.equal(chunked, seg.predict(None, boxes, return_numpy=False)[0])
    # The fused inference head gives the probabilities of the trained, unfused one.
    plain = BoxPromptedSegmenter.from_checkpoint(run / "last.pt", fuse=False)
    plain.set_image(image)
    torch.testing.assert_close(
        seg.predict_probs(boxes), plain.predict_probs(boxes), atol=1e-4, rtol=0
    )

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert main(["eval", str(corrupt)]) == 1
    other = torch.load(run / "last.pt", weights_only=True)
    other["model_type"] = "sam"  # a model type deepmac does not know
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="'sam'"):
        BoxPromptedSegmenter.from_checkpoint(tmp_path / "other.pt")
