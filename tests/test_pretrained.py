"""Bundled models: names resolve everywhere a checkpoint is taken, cards hold their recipe, the
files load, predict, export and start a fine-tuning run with every tensor."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image

from deepmac.cli.main import main
from deepmac.config import config_from_dict
from deepmac.config.presets import PRESETS, get_preset
from deepmac.data import CocoInstances, demo_data_root
from deepmac.engine.checkpoint import CheckpointError, load_checkpoint
from deepmac.engine.pretrained import (
    CARD_KEYS,
    MODELS_DIR,
    bundled_names,
    card_markdown,
    read_card,
    resolve_model_path,
)
from deepmac.experiments.training import build_training_datasets, init_from_checkpoint
from deepmac.inference.segmenter import BoxPromptedSegmenter
from deepmac.models.families import build_model

NAMES = ["box-prompted-all", "box-prompted-voc"]
DEMO_IMAGE = demo_data_root() / "val2017" / "000000055299.jpg"


#: Every test here runs on two threads (the machine kind), whatever the session set.
pytestmark = pytest.mark.usefixtures("two_threads")


def test_the_two_models_ship_small_in_float16():
    assert bundled_names() == NAMES
    for name in NAMES:
        path = MODELS_DIR / f"{name}.pt"
        assert path.stat().st_size <= 25e6
        state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        floats = {v.dtype for v in state.values() if v.is_floating_point()}
        assert floats == {torch.float16}


def test_names_resolve_and_files_still_win(tmp_path, monkeypatch):
    assert resolve_model_path("box-prompted-voc") == MODELS_DIR / "box-prompted-voc.pt"
    # A file of that name in the working folder is taken as the file.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "box-prompted-voc").write_bytes(b"x")
    assert resolve_model_path("box-prompted-voc").resolve() == tmp_path / "box-prompted-voc"
    # A missing path stays a path: the loader says it does not exist.
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint("runs/nothing/last.pt")


def test_unknown_names_get_a_did_you_mean(capsys):
    with pytest.raises(CheckpointError, match="did you mean box-prompted-all"):
        load_checkpoint("box-prompted-al")
    with pytest.raises(ValueError, match="did you mean box-prompted-voc"):
        BoxPromptedSegmenter.from_pretrained("box_prompted_voc")
    with pytest.raises(ValueError, match="not a bundled model"):
        BoxPromptedSegmenter.from_pretrained(str(MODELS_DIR / "box-prompted-voc.pt"))
    images = str(demo_data_root() / "val2017")
    assert main(["predict", "box-promted-all", "--images", images, "--out", "x.json"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean box-prompted-all" in err


def test_deepmac_models_lists_names_and_metrics(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        card = read_card(name)
        assert name in out and f"{card['metrics']['nonvoc']:.3f}" in out


@pytest.mark.parametrize("name", NAMES)
def test_card_holds_the_recipe_and_docs_quote_it(name):
    card = read_card(name)
    assert all(key in card for key in CARD_KEYS)
    assert card["name"] == name and card["preset"] == "bundled_" + name.replace("-", "_")
    assert card["preset"] in PRESETS and card["preset"] in card["command"]
    saved = config_from_dict(load_checkpoint(name)["config"])
    recipe = get_preset(card["preset"])
    # The file was trained by its recipe as the code states it now.
    assert saved.model == recipe.model and saved.train == recipe.train
    assert saved.data.mask_split == recipe.data.mask_split
    assert card["steps"] == recipe.train.steps
    assert "demo@val2017" in saved.data.exclude_from_training
    assert all("coco_mini@val2017" not in root for root in saved.data.roots)
    assert card_markdown(card) in (REPO_ROOT / "docs" / "models.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_card_training_images_are_the_recipes(name, coco_tiny_root):
    card = read_card(name)
    cfg = get_preset(card["preset"])
    names = sorted(
        d.image_info(i)["file_name"]
        for d in build_training_datasets(cfg, None)
        for i in range(len(d))
    )
    assert len(names) == card["training_images"]
    assert (
        hashlib.sha256("\n".join(names).encode()).hexdigest() == card["training_image_list_sha256"]
    )
    demo_val = CocoInstances(demo_data_root(), "val2017")
    held_out = {demo_val.image_info(i)["file_name"] for i in range(len(demo_val))}
    assert not held_out & set(names)


@pytest.mark.parametrize("name", NAMES)
def test_bundled_model_predicts_masks_that_follow_the_box(name):
    segmenter = BoxPromptedSegmenter.from_pretrained(name)
    image = Image.open(DEMO_IMAGE)
    dataset = CocoInstances(demo_data_root(), "val2017")
    index = next(
        i for i in range(len(dataset)) if dataset.image_info(i)["file_name"] == DEMO_IMAGE.name
    )
    _, target = dataset[index]
    masks, scores = segmenter.predict(image, target["boxes"].numpy())
    assert masks.shape == (len(target["boxes"]), image.height, image.width)
    assert masks.dtype == np.bool_ and scores.shape == (len(target["boxes"]),)
    # A trained model: its masks overlap the ground truth far better than chance.
    gt = target["gt_masks"].numpy()
    iou = (masks & gt).sum((1, 2)) / np.maximum((masks | gt).sum((1, 2)), 1)
    assert iou.mean() > 0.5


def test_outputs_never_replace_a_bundled_model(capsys):
    target = str(MODELS_DIR / "box-prompted-all.pt")
    before = (MODELS_DIR / "box-prompted-all.pt").read_bytes()
    assert main(["export", "box-prompted-all", "--onnx", target]) == 2
    assert main(["eval", "box-prompted-all", "--out", target]) == 2
    assert "is the checkpoint; expected a new file" in capsys.readouterr().err
    assert (MODELS_DIR / "box-prompted-all.pt").read_bytes() == before


def test_bundled_model_exports_by_name(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "model.onnx"
    assert main(["export", "box-prompted-all", "--onnx", str(onnx)]) == 0
    assert onnx.stat().st_size > 1e6


def test_init_from_a_bundled_model_loads_every_tensor():
    ckpt = load_checkpoint("box-prompted-all")
    cfg = config_from_dict(ckpt["config"])
    cfg.model.backbone_init = None
    model = build_model(cfg.model)
    init_from_checkpoint(model, "box-prompted-all")
    state = model.state_dict()
    assert state.keys() == ckpt["model"].keys()
    for key, value in ckpt["model"].items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


def test_train_init_name_takes_the_model_from_it(tmp_path):
    command = [sys.executable, "-m", "deepmac", "train", "box_prompted_demo", "--init"]
    done = subprocess.run(
        [*command, "box-prompted-voc", "--print-config"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    saved = load_checkpoint("box-prompted-voc")["config"]
    assert printed["train"]["init_from"] == "box-prompted-voc"
    assert printed["model"]["mask_head"] == saved["model"]["mask_head"]
    assert printed["model"]["backbone_init"] is None
    done = subprocess.run(
        [*command, "box-prompted-vo", "--print-config"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "did you mean box-prompted-voc" in done.stderr
