"""Every tensor made in training, targets, evaluation and prediction follows its inputs' device.

No GPU is needed to catch a tensor made on the wrong device. Inside ``with torch.device("meta")``
a factory call without ``device=`` (``torch.zeros(n)``) makes a meta tensor, while the model and
the batch stay on the CPU: such a tensor either meets a CPU tensor (a device-mismatch error) or
is returned (and shows up as meta). Those calls are exactly the ones that would make CPU tensors
beside a CUDA model; a call that passes ``device=`` (the inputs', or ``"cpu"`` for deliberate
CPU bookkeeping) is not affected. The trap cannot cover the data loading (``deepmac.data``
builds its tensors on the CPU by design), so batches and images are decoded before entering it.

A source scan completes the trap where the tiny models do not reach (a branch, an option):
every factory call in the scanned modules names its device, or is listed in ``ALLOWED`` with the
reason it may create a tensor on the ambient default device.
"""

from __future__ import annotations

import ast
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from deepmac.config import ExperimentConfig, ModelConfig, RCNNConfig
from deepmac.data import CocoInstances, build_eval_transforms, collate_instances, demo_data_root
from deepmac.engine import precision, save_checkpoint
from deepmac.engine.devices import module_device, resolve_device
from deepmac.engine.precision import AMP_DTYPES, amp_dtype, autocast
from deepmac.engine.train import default_forward_step
from deepmac.evaluation.evaluate import evaluate_model
from deepmac.inference.detector import DeepMACPredictor, load_model
from deepmac.inference.segmenter import BoxPromptedSegmenter
from deepmac.models.centernet import encode_centernet_targets
from deepmac.models.families import build_model, get_family
from deepmac.models.instances import InstanceSampler

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
MODEL_TYPES = ("box_prompted", "deepmac", "deepmarc")
CUDA = torch.cuda.is_available()


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_experiment(model_type: str) -> ExperimentConfig:
    """A model of ``model_type`` small enough for a unit test, on the demo sample's classes."""
    cfg = ExperimentConfig()
    cfg.data.image_size = SIZE
    # Below the demo images' instance counts, so that the trap also covers the capped draw.
    cfg.data.max_instances = 2
    if model_type == "deepmarc":
        cfg.model = ModelConfig(
            type="deepmarc",
            backbone="resnet18",
            mask_head="deepmarc_default",
            mask_size=14,
            num_init_channels=16,
            max_detections=5,
            rcnn=RCNNConfig(
                fpn_channels=32,
                box_head_fc_dim=64,
                roi_batch_size_per_image=32,
                rpn_pre_nms_topk_train=300,
                rpn_post_nms_topk_train=200,
                rpn_pre_nms_topk_test=200,
                rpn_post_nms_topk_test=100,
                score_threshold=0.0,  # an untrained classifier scores about 1/81
            ),
        )
    else:
        cfg.model = ModelConfig(
            type=model_type,
            backbone="efficientnet_lite0",
            mask_head="resnet4",
            mask_size=16,
            embedding_head_channels=16,
            max_detections=5,
        )
    dataset = CocoInstances(demo_data_root(), "val2017")
    cfg.model.num_classes = len(dataset.category_ids)
    cfg.model.category_ids = list(dataset.category_ids)
    cfg.model.class_names = list(dataset.category_names)
    return cfg


def tiny_model(cfg: ExperimentConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    sampler = InstanceSampler(cfg.data.max_instances, cfg.train.mask_head_instances)
    return build_model(cfg.model, instance_sampler=sampler)


def demo_batch():
    ds = CocoInstances(
        demo_data_root(), "train2017", mask_split="voc", transforms=build_eval_transforms(SIZE)
    )
    return collate_instances([ds[i] for i in range(2)], size_divisibility=32)


def write_checkpoint(path: Path, model_type: str) -> Path:
    cfg = tiny_experiment(model_type)
    save_checkpoint(
        path,
        model=tiny_model(cfg),
        optimizer=None,
        scheduler=None,
        step=0,
        config=cfg.to_dict(),
        model_type=model_type,
    )
    return path


def test_the_meta_trap_springs_on_a_factory_call_without_device():
    """What the trap relies on: a factory call without ``device=`` makes a meta tensor, which
    cannot meet a CPU tensor; one with ``device=`` is untouched."""
    boxes = torch.rand(3, 4)
    with torch.device("meta"):
        assert torch.zeros(3).device.type == "meta"
        assert torch.zeros(3, device=boxes.device).device.type == "cpu"
        with pytest.raises((RuntimeError, NotImplementedError)):
            boxes[:, 0] - torch.arange(3)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_training_step_makes_its_tensors_on_the_batch_device(model_type):
    cfg = tiny_experiment(model_type)
    model = tiny_model(cfg).train()
    batch = demo_batch()
    criterion = get_family(cfg.model.type).criterion(cfg)
    with torch.device("meta"):
        losses = default_forward_step(model, criterion, batch)
        sum(losses.values()).backward()
    assert losses and all(v.device.type == "cpu" for v in losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.device.type == "cpu" for g in grads)


def test_centernet_targets_are_made_on_the_boxes_device():
    boxes = torch.tensor([[4.0, 8.0, 40.0, 30.0], [10.0, 10.0, 20.0, 60.0], [0.0, 0.0, 8.0, 8.0]])
    labels = torch.tensor([3, 0, 3])
    kwargs = dict(num_classes=5, output_size=(16, 16), stride=4)
    expected = encode_centernet_targets(boxes, labels, **kwargs)
    with torch.device("meta"):
        targets = encode_centernet_targets(boxes, labels, **kwargs)
    for name in ("heatmap", "indices", "sizes", "offsets"):
        value = getattr(targets, name)
        assert value.device == boxes.device, name
        assert torch.equal(value, getattr(expected, name)), name


# ----------------------------------------------------------------------------- prediction


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_box_prompted_prediction_makes_its_tensors_on_the_model_device(model_type):
    seg = BoxPromptedSegmenter(
        tiny_model(tiny_experiment(model_type)), image_size=SIZE, device="cpu"
    )
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    boxes = torch.tensor([[1.0, 1.0, 30.0, 40.0], [10.0, 5.0, 69.0, 49.0]])
    no_boxes = torch.zeros(0, 4)
    with torch.device("meta"):
        masks, scores = seg.predict(image, boxes, return_numpy=False)
        probs = seg.predict_probs(boxes)
        empty, _ = seg.predict(None, no_boxes, return_numpy=False)
    assert (
        masks.device.type == probs.device.type == empty.device.type == scores.device.type == "cpu"
    )
    assert masks.shape == (2, 50, 70) and masks.dtype == torch.bool
    assert probs.shape[0] == 2 and empty.shape == (0, 50, 70)


@pytest.mark.parametrize("model_type", ["deepmac", "deepmarc"])
def test_detection_makes_its_tensors_on_the_model_device(model_type):
    cfg = tiny_experiment(model_type)
    predictor = DeepMACPredictor(
        tiny_model(cfg),
        image_size=SIZE,
        category_ids=cfg.model.category_ids,
        class_names=cfg.model.class_names,
        device="cpu",
    )
    image = np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    with torch.device("meta"):
        inst = predictor.predict(image)
    k = len(inst.boxes)
    assert 0 < k <= cfg.model.max_detections
    for value in (inst.boxes, inst.scores, inst.labels, inst.category_ids, inst.masks):
        assert value.device.type == "cpu"
    assert inst.masks.shape == (k, 48, 80) and len(inst.names) == k


# ----------------------------------------------------------------------------- evaluation


class Predecoded:
    """The first ``count`` images of a ``CocoInstances``, decoded up front, with the dataset
    interface the evaluation uses: its tensors are made outside the meta trap."""

    def __init__(self, dataset: CocoInstances, count: int) -> None:
        self.ann_file = dataset.ann_file
        self.contiguous_to_category_id = dataset.contiguous_to_category_id
        self._items = [dataset[i] for i in range(count)]
        self._images = [dataset.load_image(i) for i in range(count)]
        self._infos = [dataset.image_info(i) for i in range(count)]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int):
        return self._items[index]

    def load_image(self, index: int) -> torch.Tensor:
        return self._images[index]

    def image_info(self, index: int) -> dict:
        return self._infos[index]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_evaluation_makes_its_tensors_on_the_model_device(model_type):
    cfg = tiny_experiment(model_type)
    model = tiny_model(cfg)
    dataset = Predecoded(CocoInstances(demo_data_root(), "val2017", mask_split="voc"), 2)
    with torch.device("meta"):
        metrics, results = evaluate_model(model, cfg, dataset)
    key = "mask_iou/all/mIoU" if model_type == "box_prompted" else "segm/all/AP"
    assert 0.0 <= metrics[key] <= 1.0 and results
    # The model stays where it is: evaluating during training must not move it.
    assert module_device(model).type == "cpu"


# ----------------------------------------------------------------------------- plumbing


def test_amp_names_and_autocast_on_the_model_device_type(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_kernels", lambda dtype: True)  # any CPU
    assert amp_dtype("none") is None and amp_dtype("bf16") is torch.bfloat16
    assert sorted(AMP_DTYPES) == ["bf16", "fp16", "none"]
    with pytest.raises(ValueError, match=r"one of \['bf16', 'fp16', 'none'\], got 'fp8'"):
        amp_dtype("fp8")
    # Built for the device's type, not for "cpu": "cuda" for cuda:1 (not entered here, so no
    # GPU is needed; without one torch warns that it would be disabled).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert autocast(torch.device("cuda", 1), torch.float16).device == "cuda"
    assert autocast("cpu", torch.bfloat16).device == "cpu"
    with autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_amp_runs_float32_on_a_cpu_without_kernels_of_its_dtype(monkeypatch, caplog):
    """bf16 on a CPU without bf16 kernels (AVX2 only: emulated, 9x slower) runs in float32,
    warned once; other devices keep the dtype asked for."""
    real = precision.cpu_has_kernels
    monkeypatch.setattr(precision, "cpu_has_kernels", lambda dtype: False)
    precision._warn_float32.cache_clear()
    with caplog.at_level(logging.WARNING, logger="deepmac.engine.precision"):
        assert precision.run_dtype(torch.bfloat16, "cpu") is None
        assert precision.run_dtype(torch.bfloat16, torch.device("cpu")) is None
        with autocast("cpu", torch.bfloat16):
            assert not torch.is_autocast_enabled("cpu")
    warned = [r.getMessage() for r in caplog.records if "float32 instead" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("amp bf16: this CPU (")
    assert precision.run_dtype(torch.bfloat16, "cuda") is torch.bfloat16
    assert precision.run_dtype(None, "cpu") is None
    # What this machine has: a bool either way, from oneDNN or the ISA.
    assert isinstance(real(torch.bfloat16), bool) and isinstance(real(torch.float16), bool)


def test_device_names():
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    with pytest.raises(ValueError, match="one of cpu, cuda, auto or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    if not CUDA:
        with pytest.raises(ValueError, match="device=cuda but torch sees no CUDA device"):
            resolve_device("cuda")


def test_predictors_take_device_and_amp(tmp_path):
    ckpt = write_checkpoint(tmp_path / "d.pt", "deepmac")
    image = np.random.default_rng(2).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    boxes = [[2.0, 3.0, 30.0, 35.0]]
    for amp in ("none", "bf16"):
        seg = BoxPromptedSegmenter.from_checkpoint(ckpt, device="cpu", amp=amp)
        assert seg.device == module_device(seg.model) == torch.device("cpu")
        assert seg.amp_dtype is AMP_DTYPES[amp]
        masks, _ = seg.predict(image, boxes, return_numpy=False)
        assert masks.shape == (1, 40, 60) and masks.device.type == "cpu"
        predictor = load_model(ckpt, device=torch.device("cpu"), amp=amp)
        assert predictor.device == torch.device("cpu") and predictor.amp_dtype is AMP_DTYPES[amp]
        inst = predictor.predict(image)
        assert inst.masks.shape[1:] == (40, 60) and inst.boxes.device.type == "cpu"
    with pytest.raises(ValueError, match="amp must be one of"):
        BoxPromptedSegmenter.from_checkpoint(ckpt, amp="half")
    # Without a device the predictors leave the model where it is (here a meta copy, which
    # a move to the CPU could not even make).
    model = build_model(tiny_experiment("box_prompted").model).to("meta")
    assert BoxPromptedSegmenter(model, image_size=SIZE).device == torch.device("meta")


@pytest.fixture
def constructed(monkeypatch):
    """``(class name, device the predictor ended on, its amp dtype)`` of every predictor built
    while the test runs."""
    seen = []
    for cls in (BoxPromptedSegmenter, DeepMACPredictor):
        real = cls.__init__

        def init(self, *args, _real=real, _name=cls.__name__, **kwargs):
            _real(self, *args, **kwargs)
            seen.append((_name, self.device, self.amp_dtype))

        monkeypatch.setattr(cls, "__init__", init)
    return seen


def test_cli_eval_and_predict_take_the_device(tmp_path, constructed, capsys):
    from deepmac.cli.main import main

    ckpt = str(write_checkpoint(tmp_path / "d.pt", "deepmac"))
    cpu = torch.device("cpu")
    args = ["eval", ckpt, "--max-images", "1", "--no-progress", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "m.json")]) == 0
    assert main([*args, "--gt-boxes", "--amp", "bf16"]) == 0
    assert constructed == [
        ("DeepMACPredictor", cpu, None),
        ("BoxPromptedSegmenter", cpu, torch.bfloat16),
    ]
    assert 0.0 <= json.loads((tmp_path / "m.json").read_text())["segm/all/AP"] <= 1.0

    root = demo_data_root()
    boxes = root / "annotations" / "instances_val2017.json"
    out = tmp_path / "r.json"
    images = str(root / "val2017")
    args = ["predict", ckpt, "--images", images, "--out", str(out), "--device", "auto"]
    assert main(args) == 0 and main([*args, "--boxes", str(boxes)]) == 0
    device = torch.device("cuda" if CUDA else "cpu")
    assert [c[:2] for c in constructed[2:]] == [
        ("DeepMACPredictor", device),
        ("BoxPromptedSegmenter", device),
    ]
    assert json.loads(out.read_text())
    capsys.readouterr()
    if not CUDA:
        # One line naming what is missing, no traceback, before any checkpoint is read.
        assert main(["eval", str(tmp_path / "absent.pt"), "--device", "cuda"]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "device=cuda but torch sees no CUDA device" in err


# ----------------------------------------------------------------------------- source scan

#: Tensor factories that take ``device=`` and otherwise use the ambient default device.
FACTORIES = frozenset(
    {"arange", "as_tensor", "empty", "eye", "full", "linspace", "ones", "rand", "randint",
     "randn", "randperm", "tensor", "zeros"}
)  # fmt: skip

#: The code training, targets, evaluation and prediction run.
SCANNED = (
    "deepmac/inference/segmenter.py",
    "deepmac/inference/detector.py",
    "deepmac/inference/image_frame.py",
    "deepmac/engine/train.py",
    "deepmac/export/runtime.py",
    "deepmac/models",
    "deepmac/backbones",
    "deepmac/mask_heads",
    "deepmac/ops",
    "deepmac/structures",
    "deepmac/evaluation",
)

#: ``(file, enclosing function, factory)`` allowed without ``device=``, with the reason. Values
#: passed straight to ``register_buffer`` are allowed everywhere: they are made at construction
#: (on the ambient device, so that ``with torch.device("cuda"): build_model(...)`` works) and
#: ``module.to(device)`` moves them.
ALLOWED = {
    ("deepmac/models/deepmarc/anchors.py", "cell_anchors", "as_tensor"): (
        "construction time: AnchorGenerator.__init__ registers the result as a buffer"
    ),
}


def factory_calls_without_device(source: str, path: str) -> list[tuple[str, str, int, str]]:
    """``(path, enclosing function, line, factory)`` of each ``torch.<factory>(...)`` call in
    ``source`` without a ``device=`` argument, outside ``register_buffer(...)`` arguments."""
    found = []

    class Visitor(ast.NodeVisitor):
        def __init__(self) -> None:
            self.functions = ["<module>"]

        def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
            self.functions.append(node.name)
            self.generic_visit(node)
            self.functions.pop()

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Call(self, node: ast.Call) -> None:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "register_buffer":
                return  # construction-time buffer values (see ALLOWED)
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "torch"
                and func.attr in FACTORIES
                and not any(k.arg == "device" for k in node.keywords)
            ):
                found.append((path, self.functions[-1], node.lineno, func.attr))
            self.generic_visit(node)

    Visitor().visit(ast.parse(source))
    return found


def scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = REPO / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def test_source_scan_catches_what_it_should():
    source = """
import torch
def bare(x):
    return torch.zeros(3) + torch.arange(len(x), dtype=torch.long)
def placed(x):
    return torch.zeros(3, device=x.device) + x.new_zeros(3)
class M(torch.nn.Module):
    def __init__(self):
        self.register_buffer("b", torch.tensor([1.0, 2.0]), persistent=False)
"""
    found = factory_calls_without_device(source, "m.py")
    assert sorted((f[1], f[3]) for f in found) == [("bare", "arange"), ("bare", "zeros")]


def test_factory_calls_name_their_device():
    found = []
    for file in scanned_files():
        found += factory_calls_without_device(file.read_text(), file.relative_to(REPO).as_posix())
    offences = [
        f"{path}:{line} torch.{name}(...) in {function}() has no device="
        for path, function, line, name in found
        if (path, function, name) not in ALLOWED
    ]
    assert not offences, "\n".join(offences)
    used = {(p, fn, name) for p, fn, _, name in found}
    stale = sorted(set(ALLOWED) - used)
    assert not stale, f"ALLOWED entries that match no call any more, remove them: {stale}"
