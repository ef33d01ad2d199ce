"""Tests for deepmac.engine: schedule, checkpoints, the training loop and exact resume."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from deepmac.engine import (
    CheckpointError,
    WarmupCosineSchedule,
    build_warmup_cosine,
    get_rng_state,
    load_checkpoint,
    read_metrics,
    restore_rng_state,
    resume_from,
    save_checkpoint,
    train,
)

MODEL_TYPE = "tiny"


# --------------------------------------------------------------------------- tiny fixtures


class TinyNet(nn.Module):
    """Two convs with dropout, so the global torch RNG matters to the trained weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(4, 1, 1)

    def forward(self, images: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        return self.conv2(self.drop(F.relu(self.conv1(images))))


def tiny_criterion(outputs: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
    target = torch.stack([t["mask"] for t in targets])
    return {
        "loss_mse": F.mse_loss(outputs, target),
        "loss_l1": 0.1 * (outputs - target).abs().mean(),
    }


class AugmentedDataset(Dataset):
    """Random images whose augmentation draws from torch, python and numpy global RNGs."""

    def __init__(self, n: int = 10) -> None:
        gen = torch.Generator().manual_seed(123)
        self.images = torch.rand(n, 3, 8, 8, generator=gen)
        self.masks = (torch.rand(n, 1, 8, 8, generator=gen) > 0.5).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image, mask = self.images[i], self.masks[i]
        if torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        image = image * (0.8 + 0.4 * random.random()) + float(np.random.uniform(-0.1, 0.1))
        return image, {"mask": mask}


def collate(batch: list) -> tuple[torch.Tensor, list[dict]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def make_loader(seed: int = 0, batch_size: int = 3) -> DataLoader:
    """10 images, 3 batches per epoch, shuffled by a seeded generator."""
    dataset = AugmentedDataset()
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RandomSampler(dataset, generator=gen),
        generator=gen,
        collate_fn=collate,
        drop_last=True,
    )


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def build(seed: int, total_steps: int = 8):
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, eps=1e-7)
    scheduler = build_warmup_cosine(
        optimizer, base_lr=1e-2, total_steps=total_steps, warmup_steps=2, warmup_lr=1e-3
    )
    return model, optimizer, scheduler


def run(out_dir, *, total_steps, model=None, optimizer=None, scheduler=None, **kwargs):
    if model is None:
        model, optimizer, scheduler = build(0)
    kwargs.setdefault("train_loader", make_loader())
    result = train(
        model=model,
        criterion=tiny_criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=total_steps,
        out_dir=out_dir,
        config={"lr": 1e-2, "name": "tiny"},
        model_type=MODEL_TYPE,
        progress=False,
        **kwargs,
    )
    return model, optimizer, result


# --------------------------------------------------------------------------- schedule


def test_schedule_od_api_values() -> None:
    s = WarmupCosineSchedule(base_lr=1e-3, total_steps=50_000, warmup_steps=5_000, warmup_lr=2.5e-4)
    assert s.lr_at(0) == pytest.approx(2.5e-4)
    assert s.lr_at(2_500) == pytest.approx(6.25e-4)  # 2.5e-4 + 7.5e-4 * 0.5
    assert s.lr_at(5_000) == pytest.approx(1e-3)
    assert s.lr_at(27_500) == pytest.approx(5e-4)  # cos(pi / 2) = 0
    assert s.lr_at(50_000) == pytest.approx(0.0, abs=1e-15)
    assert s.lr_at(60_000) == 0.0


def test_schedule_drives_optimizer_and_round_trips(tmp_path) -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=123.0)  # overridden by base_lr
    sched = build_warmup_cosine(opt, base_lr=1.0, total_steps=10, warmup_steps=4, warmup_lr=0.2)
    # warm-up 0.2, 0.4, 0.6, 0.8; then 0.5 * (1 + cos(pi * (s - 4) / 6)).
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 0.5 * (1 + math.cos(math.pi / 6)), 0.75, 0.5]
    seen = []
    for _ in expected:
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected, rel=1e-12)

    torch.save(sched.state_dict(), tmp_path / "s.pt")
    opt2 = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_warmup_cosine(opt2, base_lr=1.0, total_steps=99, warmup_steps=0, warmup_lr=0.0)
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert sched2.lr_lambdas[0].total_steps == 10
    assert sched2.last_epoch == len(expected)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)))
    for _ in range(3):
        opt2.step()
        sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)  # step 12 > total


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_steps": 20}, "warmup_steps"),
        ({"warmup_lr": 2.0}, "warmup_lr"),
        ({"total_steps": 0}, "total_steps"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, match) -> None:
    args = {"base_lr": 1.0, "total_steps": 10, "warmup_steps": 2, "warmup_lr": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        WarmupCosineSchedule(**args)


# --------------------------------------------------------------------------- checkpoint


def _save(path, step: int = 3, model_type: str = MODEL_TYPE) -> TinyNet:
    model, optimizer, scheduler = build(0)
    save_checkpoint(
        path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        step=step,
        config={"a": 1},
        model_type=model_type,
    )
    return model


def test_checkpoint_round_trip_and_rng(tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    seed_all(5)
    model = _save(path)
    draws = (torch.rand(3), random.random(), np.random.rand(2))
    ckpt = load_checkpoint(path, expected_model_type=MODEL_TYPE)
    assert ckpt["step"] == 3 and ckpt["config"] == {"a": 1} and ckpt["model_type"] == MODEL_TYPE
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt["model"][key], value)
    restore_rng_state(ckpt)
    assert torch.equal(torch.rand(3), draws[0])
    assert random.random() == draws[1]
    assert np.array_equal(np.random.rand(2), draws[2])


def test_rng_state_survives_gaussian_caches() -> None:
    random.gauss(0, 1)  # leaves python's cached second gaussian set
    np.random.standard_normal()  # leaves numpy's cached gaussian set
    state = get_rng_state()
    expected = (random.gauss(0, 1), np.random.standard_normal())
    restore_rng_state(state)
    assert (random.gauss(0, 1), np.random.standard_normal()) == expected


def test_checkpoint_failed_save_keeps_previous_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    _save(path, step=1)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(path, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_checkpoint_missing_corrupt_and_wrong_type(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")

    good = tmp_path / "good.pt"
    _save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is not a readable deepmac"):
        load_checkpoint(truncated)

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="other.pt is not a deepmac checkpoint"):
        load_checkpoint(other)

    with pytest.raises(ValueError, match="'tiny' checkpoint, expected 'deepmac'"):
        load_checkpoint(good, expected_model_type="deepmac")


# --------------------------------------------------------------------------- training loop


def test_train_writes_metrics_config_and_checkpoint(tmp_path) -> None:
    seed_all(0)
    evals = []

    def evaluate(model: nn.Module, step: int) -> dict:
        assert not model.training and not torch.is_grad_enabled()
        evals.append(step)
        return {"miou": torch.tensor(0.5), "step_seen": step}

    model, _, result = run(
        tmp_path, total_steps=5, log_every=2, eval_every=3, evaluate=evaluate, clip_grad_norm=1.0
    )
    assert model.training and evals == [3]
    assert result["step"] == 5 and result["eval"]["step_seen"] == 3
    records = read_metrics(tmp_path / "metrics.jsonl")
    train_lines = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train_lines] == [2, 4, 5]  # and a final line at total_steps
    for r in train_lines:
        assert {
            "loss",
            "loss_mse",
            "loss_l1",
            "lr",
            "images_per_s",
            "elapsed_s",
            "grad_norm",
        } <= set(r)
        assert r["loss"] == pytest.approx(r["loss_mse"] + r["loss_l1"])
    assert [r for r in records if r["type"] == "eval"] == [
        {"type": "eval", "step": 3, "miou": 0.5, "step_seen": 3}
    ]
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-2, "name": "tiny"}
    assert load_checkpoint(tmp_path / "last.pt", expected_model_type=MODEL_TYPE)["step"] == 5


def test_train_bf16_autocast_and_image_batch_objects(tmp_path) -> None:
    class Batch:  # stands in for deepmac.data.collate.ImageBatch
        def __init__(self, tensor):
            self.tensor = tensor

        def to(self, device, non_blocking=False):
            return Batch(self.tensor.to(device))

    loader = [(Batch(torch.rand(2, 3, 8, 8)), [{"mask": torch.zeros(1, 8, 8)}] * 2)] * 2
    _, _, result = run(tmp_path, total_steps=3, train_loader=loader, amp_dtype=torch.bfloat16)
    assert result["step"] == 3 and math.isfinite(result["losses"]["loss"])


@pytest.mark.parametrize("kernels", [True, False])
def test_train_autocast_follows_the_cpu_kernels(tmp_path, monkeypatch, kernels) -> None:
    """bf16 steps run under autocast where the CPU has bf16 kernels, in float32 where not."""
    from deepmac.engine import precision

    class Recording(TinyNet):
        seen: list[bool] = []

        def forward(self, images, targets):
            self.seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(images, targets)

    monkeypatch.setattr(precision, "cpu_has_kernels", lambda dtype: kernels)
    torch.manual_seed(0)
    model = Recording()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    run(tmp_path, total_steps=2, model=model, optimizer=optimizer, scheduler=scheduler,
        amp_dtype=torch.bfloat16)  # fmt: skip
    assert model.seen == [kernels, kernels]


def test_nonfinite_loss_stops_without_overwriting_checkpoint(tmp_path) -> None:
    calls = {"n": 0}

    def criterion(outputs, targets):
        calls["n"] += 1
        losses = tiny_criterion(outputs, targets)
        if calls["n"] == 3:
            losses["loss_mse"] = losses["loss_mse"] * float("nan")
        return losses

    model, optimizer, scheduler = build(0)
    with pytest.raises(RuntimeError, match=r"non-finite loss at step 3: .*'loss_mse': nan"):
        train(
            model=model, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
            train_loader=make_loader(), total_steps=8, out_dir=tmp_path, config={},
            model_type=MODEL_TYPE, checkpoint_every=1, progress=False,
        )  # fmt: skip
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


def test_bad_loss_dict_is_a_type_error(tmp_path) -> None:
    model, optimizer, scheduler = build(0)
    with pytest.raises(TypeError, match="scalar tensor"):
        train(
            model=model, criterion=lambda out, tgt: {"loss_x": out}, optimizer=optimizer,
            scheduler=scheduler, train_loader=make_loader(), total_steps=1, out_dir=tmp_path,
            config={}, model_type=MODEL_TYPE, progress=False,
        )  # fmt: skip


def test_bad_arguments_and_empty_loader(tmp_path) -> None:
    model, optimizer, scheduler = build(0)
    common = dict(model=model, criterion=tiny_criterion, optimizer=optimizer, scheduler=scheduler,
                  out_dir=tmp_path, config={}, model_type=MODEL_TYPE, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="log_every must be >= 1, got 0"):
        train(train_loader=make_loader(), total_steps=2, log_every=0, **common)
    with pytest.raises(RuntimeError, match="yielded no batch"):
        train(train_loader=[], total_steps=2, **common)


def test_to_jsonable_and_engine_imports_no_model_code() -> None:
    from deepmac.engine.metrics import to_jsonable

    record = {"a": torch.tensor(1.5), "b": np.float32(2.0), "c": float("nan"), "d": (1, 2)}
    assert json.loads(json.dumps(to_jsonable(record))) == {
        "a": 1.5,
        "b": 2.0,
        "c": "nan",
        "d": [1, 2],
    }
    code = (
        "import sys, deepmac.engine; "
        "bad = [m for m in sys.modules if m.startswith('deepmac.') "
        "and not m.startswith(('deepmac.engine', 'deepmac.utils'))]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _rng_consuming_eval(model: nn.Module, step: int) -> dict:
    torch.rand(100), random.random(), np.random.rand()
    return {"x": 1.0}


@pytest.mark.parametrize("split", [3, 4, 6])  # end of epoch 0, mid epoch 1, end of epoch 1
def test_resume_is_bit_exact(tmp_path, split) -> None:
    total = 8
    seed_all(0)
    # The straight run also evaluates (consuming RNG): evaluation must not change the weights.
    straight, straight_opt, _ = run(
        tmp_path / "a", total_steps=total, eval_every=2, evaluate=_rng_consuming_eval
    )
    straight_rng = torch.get_rng_state()

    seed_all(0)
    run(tmp_path / "b", total_steps=split, log_every=2, clip_grad_norm=10.0)
    # A crash after the checkpoint may have logged further steps; resume must drop them.
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"type": "train", "step": split + 1, "loss": 0.0}) + "\n")

    seed_all(1234)  # a fresh process: different global RNG and initial weights
    model, optimizer, scheduler = build(seed=99)
    state = resume_from(
        tmp_path / "b" / "last.pt",
        model=model, optimizer=optimizer, scheduler=scheduler, expected_model_type=MODEL_TYPE,
    )  # fmt: skip
    assert state.step == split
    run(
        tmp_path / "b", total_steps=total, model=model, optimizer=optimizer, scheduler=scheduler,
        resume=state, log_every=2, clip_grad_norm=10.0,
    )  # fmt: skip

    for (name, a), b in zip(
        straight.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(
        straight_opt.state_dict()["state"].values(),
        optimizer.state_dict()["state"].values(),
        strict=True,
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), straight_rng)
    records = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert all("lr" in r for r in records)  # the injected post-checkpoint line was dropped
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)) and steps[-1] == total


# --------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    from torch.utils.data.distributed import DistributedSampler

    from deepmac.engine import all_gather_object, cleanup, init_distributed, wrap_ddp

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    init_distributed()
    seed_all(rank)
    model, optimizer, scheduler = build(0)
    model = wrap_ddp(model)
    dataset = AugmentedDataset()
    loader = DataLoader(
        dataset, batch_size=2, sampler=DistributedSampler(dataset, seed=0), collate_fn=collate
    )
    run(out_dir, total_steps=4, model=model, optimizer=optimizer, scheduler=scheduler,
        train_loader=loader, log_every=1)  # fmt: skip
    weights = [p.detach().clone() for p in model.parameters()]
    gathered = all_gather_object(weights)
    if rank == 0:
        same = all(torch.equal(a, b) for a, b in zip(*gathered, strict=True))
        torch.save({"same": same}, os.path.join(out_dir, "ddp_result.pt"))
    cleanup()


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert torch.load(tmp_path / "ddp_result.pt")["same"]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # rank 0 only: no duplicated lines
