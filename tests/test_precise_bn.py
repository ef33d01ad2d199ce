"""Precise BatchNorm statistics (``deepmac.engine.precise_bn``, ``train.precise_bn_batches``):
the running statistics become the mean of the batch statistics, nothing else changes, and a
training run recomputes them once, after its last step."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_BOX_PROMPTED_OVERRIDES
from torch import nn

from deepmac.backbones import FrozenBatchNorm2d
from deepmac.config import apply_overrides
from deepmac.config.presets import get_preset
from deepmac.engine.checkpoint import load_checkpoint
from deepmac.engine.precise_bn import recompute_batch_norm_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_running_statistics_become_the_mean_of_the_batch_statistics():
    torch.manual_seed(0)
    # momentum 0.9 (Keras 0.1, the official hourglass BN): running stats ~ the last batch's
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.9), FrozenBatchNorm2d(4))
    batches = [torch.randn(2, 3, 5, 5) * (1 + k) + k for k in range(3)]
    conv, norm, frozen = model
    frozen.running_mean += 7.0
    frozen_before = frozen.running_mean.clone()
    weights = [p.detach().clone() for p in model.parameters()]
    model.eval()

    count = recompute_batch_norm_statistics(
        model,
        batches,
        lambda m, x: m(x),
        num_batches=5,  # cycled: 0 1 2 0 1
    )
    assert count == 1
    with torch.no_grad():
        outs = [conv(batches[k]) for k in (0, 1, 2, 0, 1)]
    means = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    variances = torch.stack([o.transpose(0, 1).flatten(1).var(1) for o in outs]).mean(0)
    torch.testing.assert_close(norm.running_mean, means)
    torch.testing.assert_close(norm.running_var, variances)
    assert norm.momentum == 0.9 and not model.training  # restored
    torch.testing.assert_close(frozen.running_mean, frozen_before)  # frozen: untouched
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert recompute_batch_norm_statistics(nn.Linear(2, 2), batches, print, num_batches=3) == 0


def test_training_recomputes_the_statistics_once_after_the_last_step(tmp_path):
    from deepmac.experiments.training import run_training

    cfg = get_preset("box_prompted_demo")
    cfg.model.backbone_init = None
    apply_overrides(cfg, [*TINY_BOX_PROMPTED_OVERRIDES, "train.steps=2"])
    run_training(cfg, tmp_path / "plain", progress=False)
    cfg.train.precise_bn_batches = 3
    run_training(cfg, tmp_path / "precise", progress=False)

    plain, precise = (load_checkpoint(tmp_path / n / "last.pt") for n in ("plain", "precise"))
    assert "precise_bn" not in plain and precise["precise_bn"] == {"batches": 3}
    keys = [k for k in plain["model"] if k.startswith("mask_branch") and "running" in k]
    assert keys and any(not torch.equal(plain["model"][k], precise["model"][k]) for k in keys)
    weights = [k for k in plain["model"] if k.endswith(".weight")]
    assert all(torch.equal(plain["model"][k], precise["model"][k]) for k in weights)
    lines = (tmp_path / "precise" / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["type"] == "precise_bn" and record["batches"] == 3 and record["batch_norms"] > 0

    # Resumed at its last step: nothing to train, the statistics are not recomputed.
    run_training(cfg, tmp_path / "precise", resume=True, progress=False)
    assert (tmp_path / "precise" / "metrics.jsonl").read_text().splitlines() == lines


def test_negative_batches_are_refused(tmp_path):
    from deepmac.experiments.training import run_training

    cfg = get_preset("box_prompted_demo")
    cfg.train.precise_bn_batches = -1
    with pytest.raises(
        ValueError, match=r"train.precise_bn_batches must be >= 0 \(0: off\), got -1"
    ):
        run_training(cfg, tmp_path / "run", progress=False)
