"""Multi-process training with torchrun on CPU (gloo): two processes with batch B train exactly
what one process with batch 2B trains, BatchNorm statistics included (synchronised over the
processes, as the paper trains)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from deepmac.config import ModelConfig
from deepmac.data import demo_data_root
from deepmac.engine.sync_batchnorm import DistributedBatchNorm2d, convert_to_distributed_batchnorm
from deepmac.models.families import build_model

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")

STEPS = 2
PER_PROCESS_BATCH = 2


def one_instance_per_image(root: Path) -> Path:
    """A COCO root over the demo images in which each image keeps one annotated instance with
    a mask: every process then averages the mask loss over the same number of instances, the
    condition under which N x B equals one batch of N x B exactly."""
    source = demo_data_root()
    data = json.loads((source / "annotations" / "instances_train2017.json").read_text())
    kept, seen = [], set()
    for ann in sorted(data["annotations"], key=lambda a: (a["image_id"], -a["area"])):
        if ann["image_id"] not in seen and not ann.get("iscrowd") and ann["area"] > 400:
            seen.add(ann["image_id"])
            kept.append(ann)
    data["images"] = [im for im in data["images"] if im["id"] in seen][:8]
    images = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in kept if a["image_id"] in images]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    (root / "train2017").symlink_to(source / "train2017")
    return root


def _launch(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def test_two_processes_train_like_one_process_with_the_global_batch(tmp_path):
    root = one_instance_per_image(tmp_path / "data")
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, torch
            from deepmac.config import ExperimentConfig, ModelConfig
            from deepmac.engine.checkpoint import unwrap_model
            from deepmac.engine.distributed import cleanup, get_rank
            from deepmac.experiments import training as experiment

            root, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
            torch.set_num_threads(1)
            cfg = ExperimentConfig()
            cfg.model = ModelConfig(
                backbone="resnet18", mask_head="resnet4", embedding_head_channels=32
            )
            cfg.data.roots = [root]
            cfg.data.mask_split = "all"
            cfg.data.augment = False
            cfg.data.image_size = 128
            cfg.data.batch_size = batch
            cfg.data.num_workers = 0
            cfg.train.steps = {STEPS}
            cfg.train.warmup_steps = 1
            # SGD: Adam's first steps move every weight by about lr * sign(gradient), which
            # turns float-rounding differences of near-zero gradients into lr-sized ones.
            cfg.train.optimizer = "sgd"
            cfg.train.lr = 0.01
            cfg.train.device = "cpu"
            cfg.train.checkpoint_every = 0
            cfg.train.log_every = 1
            # Keep each process's trained module to compare ranks with each other.
            trained = {{}}
            original = experiment.train
            def train(**kwargs):
                trained["model"] = kwargs["model"]
                return original(**kwargs)
            experiment.train = train
            experiment.run_training(cfg, out, progress=False)
            state = unwrap_model(trained["model"]).state_dict()
            torch.save(state, f"{{out}}/rank{{get_rank()}}.pt")
            cleanup()
            """
        )
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    two = tmp_path / "two"
    _launch(
        [*launcher, "--nproc_per_node=2", str(script), str(root), str(two), str(PER_PROCESS_BATCH)],
        tmp_path,
    )
    one = tmp_path / "one"
    _launch(
        [sys.executable, str(script), str(root), str(one), str(2 * PER_PROCESS_BATCH)], tmp_path
    )

    rank0 = torch.load(two / "rank0.pt", weights_only=True)
    rank1 = torch.load(two / "rank1.pt", weights_only=True)
    single = torch.load(one / "rank0.pt", weights_only=True)
    # Only rank 0 wrote files: one checkpoint, one metrics log.
    assert sorted(p.name for p in two.iterdir()) == [
        "config.json",
        "last.pt",
        "metrics.jsonl",
        "rank0.pt",
        "rank1.pt",
    ]
    checkpoint = torch.load(two / "last.pt", weights_only=True)
    assert checkpoint["step"] == STEPS
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"ranks differ at {name}"
        assert torch.equal(value, checkpoint["model"][name])
        if value.is_floating_point():
            # Not bit-equal: float32 sums run in another order, and the BatchNorms of a
            # randomly initialised net amplify that (gradient norms agree to ~1e-4). One step
            # moves a weight by ~1e-2 here; a missed update or a wrong average is that large.
            torch.testing.assert_close(value, single[name], atol=3e-4, rtol=1e-3, msg=name)
    # Training moved the weights (equal ranks would be trivial otherwise), BatchNorm
    # statistics included.
    torch.manual_seed(0)
    initial = build_model(
        ModelConfig(backbone="resnet18", mask_head="resnet4", embedding_head_channels=32)
    ).state_dict()
    changed = [
        n for n, v in rank0.items() if v.is_floating_point() and not torch.equal(v, initial[n])
    ]
    assert any("running_mean" in n for n in changed)
    # The synchronised BatchNorms are new modules: their weights must still be the optimizer's.
    assert "mask_branch.head.blocks.0.bn2.weight" in changed
    assert len(changed) > len(rank0) // 2
    # The logged loss is the mean over both processes: the same as one process's.
    two_log = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    one_log = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert len(two_log) == len(one_log) == STEPS
    for a, b in zip(two_log, one_log, strict=True):
        # Float rounding only (batches of 2 and 4 run other convolution kernels, channels_last
        # in training): ~1e-5. Rank 0's loss alone instead of the mean would be off by >1e-2.
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert two_log[0]["images_per_s"] > 0


def test_distributed_batchnorm_is_plain_batchnorm_without_a_process_group():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    plain[1].weight.data.uniform_(0.5, 1.5)
    copy = convert_to_distributed_batchnorm(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    )
    copy.load_state_dict(plain.state_dict())
    assert isinstance(copy[1], DistributedBatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(copy(x), plain(x))
    torch.testing.assert_close(copy[1].running_var, plain[1].running_var)
