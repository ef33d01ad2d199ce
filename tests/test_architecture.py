"""The architecture holds: every family keeps the one mask-branch contract, the model type is
dispatched on in the registry only, and imports point from higher layers to lower ones."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from test_devices import demo_batch, tiny_experiment, tiny_model

from deepmac.engine.train import default_forward_step
from deepmac.models.families import MODEL_FAMILIES, get_family
from deepmac.structures.masks import PASTE_CONVENTIONS

PACKAGE = Path(__file__).resolve().parents[1] / "deepmac"


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("model_type", sorted(MODEL_FAMILIES))
def test_every_family_keeps_the_mask_branch_contract(model_type):
    """``prompt_features`` once, ``mask_branch(features, boxes, batch_index)`` per box set:
    shapes, no boxes, gradients into the features, the paste and target conventions."""
    cfg = tiny_experiment(model_type)
    model = tiny_model(cfg)
    branch = model.mask_branch
    batch, targets = demo_batch()
    images = batch.tensor[:1]
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [10.0, 0.0, 63.0, 30.0], [0.0, 0.0, 8.0, 8.0]])
    size = branch.output_size

    model.eval()
    with torch.no_grad():
        features = model.prompt_features(images)
        logits = branch(features, boxes, None)
        empty = branch(features, boxes[:0], None)
    assert logits.shape == (3, 1, size, size) and torch.isfinite(logits).all()
    assert empty.shape == (0, 1, size, size)

    model.train()
    features = model.prompt_features(batch.tensor)
    index = torch.tensor([0, 1, 1])
    branch(features, boxes, index).sum().backward()
    head_grads = [p.grad for p in branch.head.parameters() if p.requires_grad]
    assert head_grads and all(g is not None and torch.isfinite(g).all() for g in head_grads)
    # The gradient reaches the network below the branch (the features it read).
    below = [
        p.grad
        for name, p in model.named_parameters()
        if not name.startswith("mask_branch.") and p.requires_grad and p.grad is not None
    ]
    assert below and any(g.abs().sum() > 0 for g in below)

    # One convention for both directions: a box-filling mask comes back as the box.
    assert branch.paste is PASTE_CONVENTIONS[branch.paste_convention]
    box = torch.tensor([[8.0, 4.0, 24.0, 20.0]])
    pasted = branch.paste(torch.ones(1, size, size), box, (32, 32), 0.5)
    assert pasted[0, 6:18, 10:22].all() and not pasted[0, 24:, :].any()
    gt = torch.zeros(1, 32, 32, dtype=torch.bool)
    gt[0, 4:20, 8:24] = True
    crop = branch.mask_targets(gt, box, torch.tensor([0]), size)
    assert crop.shape == (1, size, size) and crop[0, 2:-2, 2:-2].min() > 0.99

    # Training goes through the family's criterion on the engine's default step.
    model.zero_grad()
    losses = default_forward_step(model, get_family(model_type).criterion(cfg), (batch, targets))
    assert "loss_mask" in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


# ----------------------------------------------------------------------------- dispatch, imports

#: A model-type switch: a comparison with, or membership in, a family name or list of them.
SWITCH = re.compile(
    r"""(==|!=|\bin)\s*\(?\s*["'](box_prompted|deepmac|deepmarc)["']|\b_is_rcnn\b"""
    r"""|\bin\s+[A-Z_]*MODEL_TYPES\b|getattr\(\s*\w+,\s*["']paste_masks"""
)


def package_sources() -> dict[str, str]:
    """Module name -> source of every deepmac module."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path.read_text()
    return out


def test_model_type_dispatch_lives_in_the_registry():
    sites = [
        f"{module}:{number}"
        for module, source in package_sources().items()
        if module != "deepmac.models.families" and not module.startswith("deepmac.convert")
        for number, line in enumerate(source.splitlines(), 1)
        if SWITCH.search(line.split("#")[0])
    ]
    # The one left: ONNX files exported before the paste convention was stored in them.
    assert len(sites) <= 2, sites


def import_graph() -> dict[str, set[str]]:
    """Module -> the deepmac modules it imports (at module or function level)."""
    sources = package_sources()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets = [n if n in sources else node.module for n in names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t.startswith("deepmac") and t != module)
    return graph


def test_no_import_circle():
    graph, state, circles = import_graph(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if module.startswith(target + "."):
                continue  # a package's own __init__
            if state.get(target) == "open":
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


#: package -> packages it must never import (the arrows point from the later to the earlier).
FORBIDDEN = {
    "deepmac.ops": ("models", "backbones", "mask_heads", "engine", "inference", "experiments"),
    "deepmac.structures": ("models", "backbones", "mask_heads", "engine", "inference"),
    "deepmac.layers": ("models", "backbones", "mask_heads", "engine", "inference"),
    "deepmac.config": ("models", "engine", "inference", "experiments", "data"),
    "deepmac.backbones": ("mask_heads", "models", "engine", "inference", "experiments"),
    "deepmac.mask_heads": ("backbones", "models", "engine", "inference", "experiments"),
    "deepmac.models": ("engine", "inference", "evaluation", "export", "experiments", "cli"),
    "deepmac.engine": ("models", "inference", "evaluation", "export", "experiments", "cli"),
    "deepmac.inference": ("experiments", "engine.train", "evaluation", "cli", "studies"),
    "deepmac.evaluation": ("experiments", "cli", "studies"),
    "deepmac.export": ("experiments", "cli", "studies"),
}


def test_imports_point_from_higher_layers_to_lower_ones():
    wrong = []
    for module, targets in import_graph().items():
        for package, forbidden in FORBIDDEN.items():
            if module == package or module.startswith(package + "."):
                for target in targets:
                    if any(
                        target == f"deepmac.{f}" or target.startswith(f"deepmac.{f}.")
                        for f in forbidden
                    ):
                        wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


@pytest.mark.parametrize("model_type", sorted(MODEL_FAMILIES))
def test_every_family_exports_the_box_prompted_graph(model_type, tmp_path):
    """The contract exports too: boxes in, probabilities out, for every family, with the
    family's paste convention stored for the runtime."""
    pytest.importorskip("onnxruntime")
    from deepmac.export import check_onnx_parity, export_onnx
    from deepmac.export.runtime import OnnxModel

    model = tiny_model(tiny_experiment(model_type)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", image_size=64, prompt=True)
    diffs = check_onnx_parity(model, path, image_size=64, prompt=True)
    assert max(diffs.values()) < 1e-4, diffs
    assert OnnxModel(path).paste is model.mask_branch.paste


@pytest.mark.parametrize("model_type", sorted(MODEL_FAMILIES))
def test_the_registry_names_parts_that_exist(model_type):
    family = get_family(model_type)
    assert family.name == model_type
    for part in ("evaluator", "predictor", "onnx_wrapper"):
        assert callable(family.load(part)), part
    assert hasattr(family.load("predictor"), "from_checkpoint")
    with pytest.raises(ValueError, match="did you mean 'deepmarc'"):
        get_family("deepmrc")
