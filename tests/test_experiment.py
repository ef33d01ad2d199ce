"""Experiment glue: evaluation images kept out of training, input size checked up front."""

from __future__ import annotations

import logging

import pytest

from deepmac.config.presets import get_preset
from deepmac.experiments.training import build_training_datasets, check_image_size


def test_evaluation_images_are_left_out_of_training(coco_tiny_root, coco_mini_root, caplog):
    """coco_tiny val2017 and coco_mini val2017 share image 435206: training on the first and
    evaluating on the second drops it from training, with one warning naming it."""
    cfg = get_preset("box_prompted_cpu")
    cfg.data.roots = [str(coco_tiny_root), f"{coco_tiny_root}@val2017"]
    cfg.data.val_root = str(coco_mini_root)
    with caplog.at_level(logging.WARNING, logger="deepmac"):
        train, val = build_training_datasets(cfg, transforms=None)
    assert len(train) == 80 and train.excluded_file_names == []
    assert len(val) == 79 and val.excluded_file_names == ["000000435206.jpg"]
    assert 435206 not in val.image_ids
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "000000435206.jpg" in warnings[0]


def test_training_on_the_evaluation_split_is_refused(coco_mini_root):
    cfg = get_preset("box_prompted_cpu")
    cfg.data.roots = [f"{coco_mini_root}@val2017"]
    cfg.data.val_root = str(coco_mini_root)
    with pytest.raises(ValueError, match="no image left once the evaluation images"):
        build_training_datasets(cfg, transforms=None)


def test_image_size_must_be_a_multiple_of_the_backbone_input():
    cfg = get_preset("box_prompted_cpu")
    check_image_size(cfg, 32)  # 384 = 12 x 32
    cfg.data.image_size = 400
    expected = r"data.image_size=400 is not a multiple of 32.*384 or 416"
    with pytest.raises(ValueError, match=expected):
        check_image_size(cfg, 32)


def test_run_training_checks_the_image_size_before_training(tmp_path):
    from deepmac.experiments.training import run_training

    cfg = get_preset("box_prompted_demo")
    cfg.model.backbone_init = None
    cfg.data.image_size = 100
    with pytest.raises(ValueError, match="data.image_size=100 is not a multiple of 32"):
        run_training(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "last.pt").exists()
