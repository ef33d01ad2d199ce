"""Deep-MARC: anchors and box coding, matcher and sampler, FPN, RPN/RoI/mask losses, which boxes
the mask head trains on (``mask_train_boxes``), post-processing, paste-back, predictor, presets.

Models here are tiny (32-channel FPN, small heads, 64-128 px images) so the file runs in well
under a minute on 2 CPU cores; the official-size presets are built only in the ``slow`` test.
"""

from __future__ import annotations

import math

import pytest
import torch

from deepmac.backbones import FPN_TRUNKS, FrozenBatchNorm2d, build_fpn_backbone
from deepmac.backbones.fpn import FPNStride4, freeze_batch_norm
from deepmac.backbones.resnet import RESNET_SPECS
from deepmac.config import ExperimentConfig, ModelConfig, RCNNConfig, apply_overrides
from deepmac.data import CocoInstances, build_eval_transforms, collate_instances, demo_data_root
from deepmac.engine.train import default_forward_step
from deepmac.models.deepmarc import (
    AnchorGenerator,
    BalancedSampler,
    BoxCoder,
    DeepMARCCriterion,
    Matcher,
    paste_roi_masks,
    roi_mask_targets,
)
from deepmac.models.deepmarc.roi_heads import class_nms
from deepmac.models.families import build_model
from deepmac.models.instances import InstanceSampler
from deepmac.ops import batched_nms
from deepmac.structures.boxes import box_iou

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(mask_train_boxes: str = "gt", **overrides) -> ModelConfig:
    """A Deep-MARC small enough for unit tests (the architecture of the real one)."""
    cfg = ModelConfig(
        type="deepmarc",
        backbone="resnet18",
        mask_head="deepmarc_default",
        mask_size=14,
        num_init_channels=16,
        num_classes=80,
        max_detections=7,
        mask_train_boxes=mask_train_boxes,
        rcnn=RCNNConfig(
            fpn_channels=32,
            box_head_fc_dim=64,
            roi_batch_size_per_image=64,
            rpn_pre_nms_topk_train=300,
            rpn_post_nms_topk_train=200,
            rpn_pre_nms_topk_test=200,
            rpn_post_nms_topk_test=100,
        ),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_batch(root, split="train2017", count=2, size=128):
    ds = CocoInstances(root, split, mask_split="voc", transforms=build_eval_transforms(size))
    return collate_instances([ds[i] for i in range(count)], size_divisibility=32)


def step_fn(max_instances: int = 8):
    """The engine's training step with Deep-MARC's criterion, at most ``max_instances`` GT
    boxes per image through the mask head."""
    criterion = DeepMARCCriterion(mask_loss_weight=1.0)

    def step(model, _, batch):
        model.instance_sampler = InstanceSampler(max_instances=max_instances)
        return default_forward_step(model, criterion, batch)

    return step


LOSS_NAMES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}


# ---------------------------------------------------------------------------- anchors, box coder


def test_anchor_layout_sizes_ratios_and_centres():
    gen = AnchorGenerator(sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0), strides=(4, 8))
    maps = [torch.zeros(1, 1, 3, 5), torch.zeros(1, 1, 2, 3)]
    p2, p3 = gen(maps)
    assert p2.shape == (3 * 5 * 3, 4) and p3.shape == (2 * 3 * 3, 4)
    w, h = p2[:, 2] - p2[:, 0], p2[:, 3] - p2[:, 1]
    # Area size^2 for every ratio, h / w = ratio, in the order of the ratios.
    torch.testing.assert_close(w * h, torch.full_like(w, 32.0**2))
    torch.testing.assert_close((h / w)[:3], torch.tensor([0.5, 1.0, 2.0]))
    centres = (p2[:, :2] + p2[:, 2:]) / 2
    # Row-major cells, anchors of a cell consecutive; centres at (j + 0.5, i + 0.5) * stride.
    torch.testing.assert_close(centres[0], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(centres[3], torch.tensor([6.0, 2.0]))  # next column
    torch.testing.assert_close(centres[5 * 3], torch.tensor([2.0, 6.0]))  # next row
    torch.testing.assert_close(((p3[:, :2] + p3[:, 2:]) / 2)[-1], torch.tensor([20.0, 12.0]))
    with pytest.raises(ValueError, match="one anchor size per stride"):
        AnchorGenerator(sizes=(32,), strides=(4, 8))


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_round_trip(weights):
    torch.manual_seed(0)
    xy = torch.rand(50, 2) * 300
    reference = torch.cat([xy, xy + 5 + torch.rand(50, 2) * 200], dim=1)
    xy = torch.rand(50, 2) * 300
    target = torch.cat([xy, xy + 1 + torch.rand(50, 2) * 200], dim=1)
    coder = BoxCoder(weights)
    deltas = coder.encode(reference, target)
    torch.testing.assert_close(coder.decode(deltas, reference), target, rtol=1e-4, atol=1e-3)
    # Identical boxes code to zero; class-specific deltas decode to (N, 4 k).
    torch.testing.assert_close(coder.encode(reference, reference), torch.zeros(50, 4))
    assert coder.decode(deltas.repeat(1, 3), reference).shape == (50, 12)


def test_box_coder_clamps_huge_scales_and_checks_shapes():
    coder = BoxCoder()
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    decoded = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), box)
    side = 10.0 * 1000 / 16  # exp(log(1000 / 16)) times the reference side
    torch.testing.assert_close(decoded[0, 2] - decoded[0, 0], torch.tensor(side))
    assert torch.isfinite(decoded).all()
    with pytest.raises(ValueError, match=r"\(N, 4 k\)"):
        coder.decode(torch.zeros(1, 5), box)
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1.0, 1.0, 0.0, 1.0))


# ------------------------------------------------------------------------------ matcher, sampler


def test_rpn_matcher_labels_on_a_hand_made_iou_matrix():
    matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    iou = torch.tensor(
        [
            # p0    p1    p2    p3    p4    p5
            [0.80, 0.50, 0.10, 0.00, 0.20, 0.00],  # gt0: p0 above 0.7
            [0.10, 0.55, 0.29, 0.00, 0.55, 0.00],  # gt1: best 0.55 (p1, p4: a tie)
        ]
    )
    matches, labels = matcher(iou)
    # p0 >= 0.7; p1, p4 only positive as gt1's best (low-quality ties); p2 < 0.3 negative;
    # p3/p5 overlap nothing: negative (gt1 reaches 0.55 elsewhere, no zero-IoU "best" match).
    assert labels.tolist() == [1, 1, 0, 0, 1, 0]
    assert matches[[0, 1, 4]].tolist() == [0, 1, 1]
    no_low_quality = Matcher([0.3, 0.7], [0, -1, 1])
    assert no_low_quality(iou)[1].tolist() == [1, -1, 0, 0, -1, 0]
    # The interval includes its lower bound: exactly 0.3 is ignored, exactly 0.7 positive.
    assert no_low_quality(torch.tensor([[0.3, 0.7, 0.2999]]))[1].tolist() == [-1, 1, 0]


def test_roi_matcher_and_no_ground_truth():
    matcher = Matcher([0.5], [0, 1])
    matches, labels = matcher(torch.tensor([[0.5, 0.49, 0.9], [0.6, 0.0, 0.1]]))
    assert labels.tolist() == [1, 0, 1] and matches.tolist() == [1, 0, 0]
    matches, labels = matcher(torch.zeros(0, 4))
    assert labels.tolist() == [0, 0, 0, 0] and matches.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="labels"):
        Matcher([0.5], [0, 1, 1])


def test_sampler_fractions():
    torch.manual_seed(0)
    labels = torch.cat([torch.ones(1000), torch.zeros(1000), -torch.ones(500)])
    positive, negative = labels == 1, labels == 0
    pos, neg = BalancedSampler(512, 0.25)(positive, negative)
    assert len(pos) == 128 and len(neg) == 384
    assert positive[pos].all() and negative[neg].all()
    assert len(set(pos.tolist())) == 128 and len(set(neg.tolist())) == 384
    pos, neg = BalancedSampler(256, 0.5)(positive, negative)
    assert (len(pos), len(neg)) == (128, 128)
    # Few positives: the rest of the budget goes to negatives.
    few = torch.zeros(2500, dtype=torch.bool)
    few[:10] = True
    pos, neg = BalancedSampler(256, 0.5)(few, negative)
    assert (len(pos), len(neg)) == (10, 246)
    # Not enough of either: everything available, no more.
    pos, neg = BalancedSampler(256, 0.5)(few, few.roll(100))
    assert (len(pos), len(neg)) == (10, 10)
    with pytest.raises(ValueError, match="both positive and negative"):
        BalancedSampler(4, 0.5)(few, few)


# -------------------------------------------------------------------------------------- backbone


def test_fpn_backbone_levels_and_frozen_batch_norm():
    torch.manual_seed(0)
    assert RESNET_SPECS["resnet101"][1] == (3, 4, 23, 3) and "resnet101" in FPN_TRUNKS
    backbone = build_fpn_backbone("resnet18", out_channels=32, norm="frozen_bn").train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.body.modules())
    images = torch.randn(2, 3, 64, 96)
    levels = backbone(images)
    assert backbone.strides == (4, 8, 16, 32, 64)
    assert [tuple(p.shape) for p in levels] == [
        (2, 32, 64 // s, math.ceil(96 / s)) for s in (4, 8, 16, 32, 64)
    ]
    # Frozen BN: train mode changes nothing, and it equals the BN it replaced in eval mode.
    bn = torch.nn.BatchNorm2d(8).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)
    frozen = freeze_batch_norm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and not list(frozen.parameters())
    x = torch.randn(4, 8, 5, 5)
    torch.testing.assert_close(frozen.train()(x), bn(x))
    # The stride-4 view for single-map models.
    p2 = FPNStride4(build_fpn_backbone("resnet18", out_channels=16))(images)
    assert len(p2) == 1 and p2[0].shape == (2, 16, 16, 24)
    # freeze_at=2 (detectron2): stem + C2 stage without gradient and with fixed BN, rest trained.
    frozen = build_fpn_backbone("resnet18", out_channels=16, freeze_at=2).body
    assert isinstance(frozen.bn1, FrozenBatchNorm2d)
    assert not any(
        p.requires_grad for p in [*frozen.conv1.parameters(), *frozen.layer1.parameters()]
    )
    assert all(p.requires_grad for p in frozen.layer2.parameters())
    assert isinstance(frozen.layer2[0].bn1, torch.nn.BatchNorm2d)
    lite = build_fpn_backbone("efficientnet_lite0", out_channels=16, freeze_at=2).body
    c2_blocks = lite.tap_indices[0] + 1
    assert not any(p.requires_grad for b in lite._blocks[:c2_blocks] for p in b.parameters())
    assert all(p.requires_grad for p in lite._blocks[c2_blocks].parameters())
    with pytest.raises(ValueError, match="norm must be one of"):
        build_fpn_backbone("resnet18", norm="group")
    with pytest.raises(ValueError, match="freeze_at must be in"):
        build_fpn_backbone("resnet18", freeze_at=6)
    with pytest.raises(ValueError, match="multiples of 32"):
        backbone(torch.zeros(1, 3, 64, 80))


# --------------------------------------------------------------------------------- config errors


def test_mask_train_boxes_is_validated_and_overridable():
    cfg = ExperimentConfig(model=tiny_config())
    apply_overrides(cfg, ["model.mask_train_boxes=proposals+gt", "model.rcnn.fpn_channels=48"])
    assert cfg.model.mask_train_boxes == "proposals+gt" and cfg.model.rcnn.fpn_channels == 48
    with pytest.raises(ValueError, match=r"mask_train_boxes must be one of 'gt', 'proposals\+gt'"):
        build_model(tiny_config("proposals"))
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model(tiny_config(mask_head="deepmarc_hourglass52", mask_size=16))
    with pytest.raises(ValueError, match="has no parameters"):
        build_model(tiny_config(mask_head="embedding_projection"))


# ------------------------------------------------------------------------ training-time behaviour


def _spy_mask_branch(model):
    seen = []
    real = model.mask_branch.forward

    def spy(features, boxes, batch_index):
        seen.append((boxes.detach().clone(), batch_index.clone()))
        return real(features, boxes, batch_index)

    model.mask_branch.forward = spy
    return seen


def _rows_in(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: whether each row of ``rows`` equals some row of ``table``."""
    return (rows[:, None, :] == table[None, :, :]).all(dim=2).any(dim=1)


def test_mask_head_trains_on_gt_boxes_only_under_gt():
    torch.manual_seed(0)
    model = build_model(tiny_config("gt")).train()
    seen = _spy_mask_branch(model)
    batch, targets = tiny_batch(demo_data_root())
    out = model(batch.tensor, targets, batch.image_sizes)
    ((boxes, index),) = seen
    gt = torch.cat([t["boxes"] for t in targets])
    gt_index = torch.cat([torch.full((len(t["boxes"]),), b) for b, t in enumerate(targets)])
    # Exactly the ground-truth boxes, every class (has_mask only weights the loss).
    assert torch.equal(boxes, gt) and torch.equal(index, gt_index)
    assert not torch.cat([t["has_mask"] for t in targets]).all()
    assert out.mask_logits[0].shape == (len(gt), 1, 28, 28)
    assert set(DeepMARCCriterion(mask_loss_weight=1.0)(out, targets)) == LOSS_NAMES
    # The sampler's cap keeps a random subset of each image's GT boxes.
    assert max(len(t["boxes"]) for t in targets) > 2
    seen.clear()
    model.instance_sampler = InstanceSampler(max_instances=2)
    model(batch.tensor, targets, batch.image_sizes)
    ((boxes, index),) = seen
    assert [int((index == b).sum()) for b in range(2)] == [min(2, len(t["boxes"])) for t in targets]
    assert _rows_in(boxes, gt).all()


def test_mask_head_trains_on_a_mix_under_proposals_plus_gt():
    torch.manual_seed(0)
    model = build_model(tiny_config("proposals+gt")).train()
    seen = _spy_mask_branch(model)
    batch, targets = tiny_batch(demo_data_root())
    out = model(batch.tensor, targets, batch.image_sizes)
    ((boxes, index),) = seen
    gt = torch.cat([t["boxes"] for t in targets])
    is_gt = _rows_in(boxes, gt)
    # The foreground RoIs: GT boxes (appended to the proposals, IoU 1) and proposals.
    assert is_gt.any() and (~is_gt).any()
    assert len(boxes) == len(out.instances.boxes) <= 2 * 16  # at most 25 % of 64 RoIs each
    # Every box overlaps its target instance's GT box by IoU >= 0.5 (foreground RoIs).
    for b, t in enumerate(targets):
        rows = index == b
        matched = t["boxes"][out.instances.gt_index[rows]]
        assert (box_iou(boxes[rows], matched).diagonal() >= 0.5).all()


@pytest.mark.parametrize("mode", ["gt", "proposals+gt"])
def test_mask_loss_only_counts_instances_with_masks(mode):
    torch.manual_seed(0)
    model = build_model(tiny_config(mode)).train()
    batch, targets = tiny_batch(demo_data_root())

    def mask_loss(targets):
        torch.manual_seed(1)  # the same anchor and RoI samples each time
        out = model(batch.tensor, targets, batch.image_sizes)
        return DeepMARCCriterion(mask_loss_weight=1.0)(out, targets)["loss_mask"].item()

    def with_masks(fill_supervised: bool):
        out = []
        for t in targets:
            masks = t["gt_masks"].clone()
            masks[t["has_mask"] == fill_supervised] = True  # a wrong, all-ones mask
            out.append({**t, "gt_masks": masks})
        return out

    reference = mask_loss(targets)
    assert mask_loss(with_masks(fill_supervised=False)) == reference
    assert mask_loss(with_masks(fill_supervised=True)) != reference


def test_losses_are_finite_on_images_without_annotations(without_annotations):
    torch.manual_seed(0)
    batch, targets = tiny_batch(demo_data_root(), size=64)
    empty = without_annotations(targets)
    for mode in ("gt", "proposals+gt"):
        model = build_model(tiny_config(mode)).train()
        losses = step_fn()(model, None, (batch, empty))
        assert set(losses) == LOSS_NAMES
        assert all(torch.isfinite(v) for v in losses.values()), losses
        assert losses["loss_rpn_cls"] > 0 and losses["loss_cls"] > 0  # all-background terms
        for name in ("loss_rpn_loc", "loss_box_reg", "loss_mask"):
            assert losses[name].item() == 0.0
        sum(losses.values()).backward()
        assert torch.isfinite(model.rpn.head.objectness.weight.grad).all()


def test_bf16_autocast_step_and_fp32_pooling():
    from deepmac.models.deepmarc.pooler import pool_levels

    # One same-sized box per image (one level, one sampling group): the layout in which
    # ``multilevel_roi_align`` on bfloat16 maps under autocast fails (a float32 result put into
    # a bfloat16 buffer); the pooler runs it in float32.
    features = [torch.randn(2, 8, 32 // s, 32 // s).bfloat16() for s in (1, 2, 4, 8)]
    boxes = torch.tensor([[0.0, 0.0, 60.0, 60.0], [4.0, 4.0, 64.0, 64.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = pool_levels(features, (4, 8, 16, 32), boxes, 7, torch.tensor([0, 1]))
    assert pooled.dtype == torch.float32 and pooled.shape == (2, 8, 7, 7)
    torch.manual_seed(0)
    model = build_model(tiny_config("proposals+gt")).train()
    batch, targets = tiny_batch(demo_data_root(), size=96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = step_fn()(model, None, (batch, targets))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_training_steps_lower_the_loss_on_coco_tiny(coco_tiny_root, train_steps):
    torch.manual_seed(0)
    model = build_model(tiny_config("gt")).train()
    batch, targets = tiny_batch(coco_tiny_root, count=2, size=128)
    losses, totals = train_steps(model, step_fn(), (batch, targets))
    assert set(losses) == LOSS_NAMES
    assert totals[-1] < 0.7 * totals[0], totals


# ------------------------------------------------------------------------------- post-processing


def test_post_processing_shapes_and_predictor(tmp_path):
    from deepmac.inference.detector import DeepMACPredictor

    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg).eval()
    model.roi_heads.score_threshold = 0.0  # an untrained classifier scores about 1/81
    batch, _ = tiny_batch(demo_data_root(), count=2, size=96)
    with torch.no_grad():
        out = model(batch.tensor, image_sizes=batch.image_sizes)
    assert len(out.detections) == 2 and out.losses == {}
    for det, (h, w) in zip(out.detections, batch.image_sizes, strict=True):
        k = len(det.boxes)
        assert 0 < k <= cfg.max_detections
        assert det.boxes.shape == (k, 4) and det.scores.shape == (k,) and det.labels.shape == (k,)
        assert (det.boxes[:, 2] <= w).all() and (det.boxes[:, 3] <= h).all()
        assert (det.boxes >= 0).all() and (det.labels < cfg.num_classes).all()
        assert (det.scores[:-1] >= det.scores[1:]).all()
    total = sum(len(d.boxes) for d in out.detections)
    assert out.mask_logits[0].shape == (total, 1, 28, 28)
    # The checkpoint path: fused mask head, masks pasted into the original frame.
    cfg_exp = ExperimentConfig(model=cfg)
    cfg_exp.data.image_size = 96
    cfg_exp.model.category_ids = list(range(1, 81))
    cfg_exp.model.class_names = [f"c{i}" for i in range(80)]
    ckpt = {"model_type": "deepmarc", "config": cfg_exp.to_dict(), "model": model.state_dict()}
    predictor = DeepMACPredictor.from_checkpoint(ckpt)
    predictor.model.roi_heads.score_threshold = 0.0
    image = (torch.rand(3, 60, 90) * 255).round()
    inst = predictor.predict(image)
    k = len(inst.boxes)
    assert 0 < k <= cfg.max_detections and inst.masks.shape == (k, 60, 90)
    assert inst.masks.dtype == torch.bool and len(inst.names) == k


def test_class_nms_matches_batched_nms_beyond_the_single_matrix_limit():
    torch.manual_seed(0)
    xy = torch.rand(4500, 2) * 400
    boxes = torch.cat([xy, xy + 10 + torch.rand(4500, 2) * 60], dim=1)
    scores, labels = torch.rand(4500), torch.randint(0, 20, (4500,))
    kept = class_nms(boxes, scores, labels, 0.5)  # the class-by-class path
    assert torch.equal(kept, batched_nms(boxes, scores, labels, 0.5))


def test_paste_and_targets_share_the_roialign_convention():
    # A full mask pasted at a box fills exactly the pixels whose centres lie inside it.
    masks = paste_roi_masks(torch.ones(1, 28, 28), torch.tensor([[2.0, 3.0, 10.0, 7.0]]), (12, 12))
    expected = torch.zeros(12, 12, dtype=torch.bool)
    expected[3:7, 2:10] = True
    assert torch.equal(masks[0], expected)
    # Crop a GT mask at its box (soft target), paste it back: the same object.
    gt = torch.zeros(1, 80, 100, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(80), torch.arange(100), indexing="ij")
    gt[0] = ((yy - 40) ** 2 / 25**2 + (xx - 45) ** 2 / 30**2) <= 1  # an ellipse
    box = torch.tensor([[15.0, 15.0, 76.0, 66.0]])
    target = roi_mask_targets(gt, box, torch.zeros(1, dtype=torch.long), 28)
    assert target.shape == (1, 28, 28) and 0 <= target.min() and target.max() <= 1
    assert ((target > 0) & (target < 1)).any()  # soft at the boundary, never binarised
    back = paste_roi_masks(target, box, (80, 100))[0]
    iou = (back & gt[0]).sum() / (back | gt[0]).sum()
    assert iou > 0.95, iou
    with pytest.raises(ValueError, match="same N"):
        paste_roi_masks(torch.ones(2, 28, 28), box, (12, 12))


# ------------------------------------------------------------------------------- presets, slow


def test_cpu_preset_is_a_deepmarc_and_builds():
    from deepmac.config.presets import get_preset

    cfg = get_preset("deepmarc_cpu")
    assert cfg.model.type == "deepmarc" and cfg.model.mask_train_boxes == "gt"
    assert cfg.train.mask_loss_weight == 1.0
    model = build_model(cfg.model)
    assert model.mask_branch.output_size == 2 * cfg.model.mask_size


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, crop, out",
    [
        ("deepmarc_r50_default_1024", 14, 28),
        ("deepmarc_r50_hourglass52_1024", 32, 64),
        ("deepmarc_r101_hourglass52_1024", 32, 64),
    ],
)
def test_official_presets_build_and_run(name, crop, out):
    from deepmac.config.presets import get_preset

    cfg = get_preset(name)
    assert cfg.data.image_size == 1024 and cfg.data.batch_size == 64
    model = build_model(cfg.model).eval()
    assert model.mask_branch.crop_size == crop and model.mask_branch.output_size == out
    with torch.no_grad():
        result = model(torch.rand(1, 3, 256, 256) * 255)
    assert result.mask_logits[0].shape[1:] == (1, out, out)


def test_cli_train_eval_predict(tmp_path):
    import json

    from deepmac.cli.main import main

    run = tmp_path / "run"
    tiny = [
        "data.image_size=64", "data.batch_size=2", "data.max_instances=4",
        "model.backbone=resnet18", "model.backbone_init=none", "model.mask_head=deepmarc_default",
        "model.mask_size=14", "model.num_init_channels=16", "model.max_detections=5",
        "model.rcnn.fpn_channels=32", "model.rcnn.box_head_fc_dim=64",
        "model.rcnn.roi_batch_size_per_image=32", "model.rcnn.score_threshold=0.0",
        "train.amp=none",
    ]  # fmt: skip
    args = ["train", "deepmarc_cpu", "--out", str(run), "--steps", "2", "--no-progress", *tiny]
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["type"] == "deepmarc" and len(config["model"]["category_ids"]) == 80
    metrics_path = tmp_path / "metrics.json"
    args = ["eval", str(run / "last.pt"), "--max-images", "2", "--no-progress"]
    assert main([*args, "--out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert 0.0 <= metrics["segm/nonvoc/AP"] <= 1.0 and 0.0 <= metrics["bbox/all/AP"] <= 1.0
    out = tmp_path / "dets.json"
    images = demo_data_root() / "val2017"
    args = ["predict", str(run / "last.pt"), "--images", str(images), "--out", str(out)]
    assert main([*args, "--score-threshold", "0"]) == 0
    dets = json.loads(out.read_text())
    assert len(dets) == 8 * 5 and all("segmentation" in d for d in dets)
    # Box prompts: the mask head at given boxes (RoIAligned FPN features), scored by mIoU...
    args = ["eval", str(run / "last.pt"), "--gt-boxes", "--max-images", "2", "--no-progress"]
    assert main([*args, "--out", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert 0.0 < metrics["mask_iou/all/mIoU"] <= 1.0 and metrics["bbox/all/AP"] == 1.0
    # ... and predicted for a boxes file.
    boxes = demo_data_root() / "annotations" / "instances_val2017.json"
    args = ["predict", str(run / "last.pt"), "--images", str(images), "--boxes", str(boxes)]
    assert main([*args, "--out", str(out)]) == 0
    prompted = json.loads(out.read_text())
    expected = [a for a in json.loads(boxes.read_text())["annotations"] if not a["iscrowd"]]
    assert len(prompted) == len(expected) and all("segmentation" in d for d in prompted)
