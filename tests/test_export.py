"""ONNX export: the graphs run in onnxruntime and agree with PyTorch; the runtime wrapper
gives the predictors' answers; the command writes the file and checks it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepmac.config import ExperimentConfig, ModelConfig, RCNNConfig
from deepmac.engine import save_checkpoint
from deepmac.models.families import build_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from deepmac.cli.main import main  # noqa: E402
from deepmac.export import check_onnx_parity, export_onnx  # noqa: E402
from deepmac.export.runtime import OnnxModel  # noqa: E402
from deepmac.inference.detector import DeepMACPredictor  # noqa: E402
from deepmac.inference.segmenter import BoxPromptedSegmenter  # noqa: E402

SIZE = 96
TOLERANCE = 1e-4  # the bound on probabilities


def small_model(model_type: str, head: str = "resnet4", seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        type=model_type,
        backbone="resnet18",
        mask_head=head,
        num_classes=3,
        max_detections=12,
        category_ids=[1, 18, 44],
        class_names=["person", "dog", "bottle"],
    )
    model = build_model(cfg).eval()
    # Non-trivial BatchNorm statistics, so a folding or layout slip would show.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model, cfg


@pytest.mark.parametrize("model_type", ["box_prompted", "deepmac"])
def test_export_matches_pytorch_for_1_7_and_0_boxes(tmp_path, model_type):
    model, _ = small_model(model_type)
    path = export_onnx(model, tmp_path / "m.onnx", image_size=SIZE)
    diffs = check_onnx_parity(model, path, image_size=SIZE)
    if model_type == "box_prompted":
        assert set(diffs) == {f"boxes={n}/mask_probs" for n in (1, 7, 0)}
    else:
        assert diffs["labels_mismatch"] == 0
        assert diffs["boxes"] < 1e-3  # input pixels
    for name, value in diffs.items():
        assert value <= TOLERANCE or name == "boxes", (name, value)


def test_deepmac_checkpoint_exports_its_box_prompted_graph(tmp_path):
    model, _ = small_model("deepmac")
    path = export_onnx(model, tmp_path / "p.onnx", image_size=SIZE, prompt=True)
    diffs = check_onnx_parity(model, path, image_size=SIZE, prompt=True)
    assert max(diffs.values()) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("head", ["hourglass52", "hourglass100", "resnet20"])
def test_export_parity_of_large_heads(tmp_path, head):
    model, _ = small_model("box_prompted", head=head)
    path = export_onnx(model, tmp_path / "m.onnx", image_size=SIZE)
    assert max(check_onnx_parity(model, path, image_size=SIZE).values()) <= TOLERANCE


def small_deepmarc(score_threshold: float) -> tuple[torch.nn.Module, ModelConfig]:
    torch.manual_seed(0)
    cfg = ModelConfig(
        type="deepmarc",
        backbone="resnet18",
        mask_head="deepmarc_default",
        mask_size=14,
        num_init_channels=16,
        num_classes=3,
        max_detections=10,
        category_ids=[1, 18, 44],
        class_names=["person", "dog", "bottle"],
        rcnn=RCNNConfig(
            fpn_channels=32,
            box_head_fc_dim=64,
            score_threshold=score_threshold,
            rpn_pre_nms_topk_test=200,
            rpn_post_nms_topk_test=50,
        ),
    )
    return build_model(cfg).eval(), cfg


def test_deepmarc_export_runs_rpn_nms_and_roialign_in_onnxruntime(tmp_path):
    """The whole Deep-MARC detector as one graph (RPN, NonMaxSuppression, RoiAlign, box head,
    mask head): the export command's parity check passes, and the runtime gives the PyTorch
    predictor's detections and masks on a non-square image."""
    model, cfg = small_deepmarc(score_threshold=0.0)  # random weights: keep every class score
    write_checkpoint(tmp_path / "r.pt", model, cfg)
    assert main(["export", str(tmp_path / "r.pt"), "--onnx", str(tmp_path / "r.onnx")]) == 0
    image = (np.random.default_rng(1).random((70, 130, 3)) * 255).astype(np.uint8)
    onnx_model = OnnxModel(tmp_path / "r.onnx")
    assert onnx_model.model_type == "deepmarc"
    expected = DeepMACPredictor.from_checkpoint(tmp_path / "r.pt").predict(image)
    got = onnx_model.detect(image)
    assert len(got.boxes) == len(expected.boxes) == 10
    torch.testing.assert_close(got.boxes, expected.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-5, rtol=0)
    assert got.category_ids.tolist() == expected.category_ids.tolist()
    assert (got.masks != expected.masks).float().mean() < 1e-3


@pytest.mark.slow
def test_deepmarc_export_with_no_detections(tmp_path):
    """A score threshold no class reaches: K = 0 in both runtimes (empty outputs, no error)."""
    model, _ = small_deepmarc(score_threshold=1.0)
    path = export_onnx(model, tmp_path / "r.onnx", image_size=SIZE)
    diffs = check_onnx_parity(model, path, image_size=SIZE)
    assert diffs == {"boxes": 0.0, "scores": 0.0, "labels_mismatch": 0.0, "mask_probs": 0.0}
    got = OnnxModel(path).detect(
        (np.random.default_rng(2).random((50, 90, 3)) * 255).astype(np.uint8)
    )
    assert got.boxes.shape == (0, 4) and got.masks.shape == (0, 50, 90)


def write_checkpoint(path, model, cfg: ModelConfig):
    experiment = ExperimentConfig()
    experiment.model = cfg
    experiment.data.image_size = SIZE
    save_checkpoint(
        path,
        model=model,
        optimizer=None,
        scheduler=None,
        step=0,
        config=experiment.to_dict(),
        model_type=cfg.type,
    )


def test_runtime_gives_the_predictors_masks(tmp_path):
    """The deployment path (resize-pad, ONNX graph, paste) against the PyTorch predictors on
    a non-square image."""
    image = (np.random.default_rng(0).random((70, 130, 3)) * 255).astype(np.uint8)
    boxes = torch.tensor([[5.0, 4.0, 60.0, 50.0], [40.0, 10.0, 129.0, 69.0]])

    model, cfg = small_model("box_prompted")
    write_checkpoint(tmp_path / "b.pt", model, cfg)
    assert main(["export", str(tmp_path / "b.pt"), "--onnx", str(tmp_path / "b.onnx")]) == 0
    ours, _ = BoxPromptedSegmenter.from_checkpoint(tmp_path / "b.pt").predict(
        image, boxes, return_numpy=False
    )
    theirs = OnnxModel(tmp_path / "b.onnx").predict_masks(image, boxes)
    assert theirs.shape == (2, 70, 130) and theirs.dtype == torch.bool
    # Probabilities agree to 1e-6; a pixel may flip only where one sits on the threshold.
    assert (ours != theirs).float().mean() < 1e-3

    model, cfg = small_model("deepmac")
    write_checkpoint(tmp_path / "d.pt", model, cfg)
    assert main(["export", str(tmp_path / "d.pt"), "--onnx", str(tmp_path / "d.onnx")]) == 0
    onnx_model = OnnxModel(tmp_path / "d.onnx")
    assert onnx_model.model_type == "deepmac" and onnx_model.class_names == cfg.class_names
    expected = DeepMACPredictor.from_checkpoint(tmp_path / "d.pt").predict(image)
    got = onnx_model.detect(image)
    assert len(got.boxes) == len(expected.boxes) == 12
    torch.testing.assert_close(got.boxes, expected.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-5, rtol=0)
    assert got.category_ids.tolist() == expected.category_ids.tolist()
    assert got.names == expected.names
    assert (got.masks != expected.masks).float().mean() < 1e-3


def test_export_command_writes_metadata_and_rejects_wrong_inputs(tmp_path, capsys):
    model, cfg = small_model("box_prompted")
    write_checkpoint(tmp_path / "b.pt", model, cfg)
    out = tmp_path / "b.onnx"
    assert main(["export", str(tmp_path / "b.pt"), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parity ok" in printed and "boxes=0/mask_probs" in printed
    runtime = OnnxModel(out)
    assert runtime.model_type == "box_prompted" and runtime.image_size == SIZE
    assert json.loads(runtime.session.get_modelmeta().custom_metadata_map["category_ids"]) == [
        1,
        18,
        44,
    ]
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="no area inside"):
        runtime.predict_masks(image, [[60.0, 0.0, 70.0, 10.0]])
    with pytest.raises(ValueError, match="graph that needs boxes"):
        runtime.detect(image)
    assert runtime.predict_masks(image, np.zeros((0, 4))).shape == (0, 40, 50)
    # A file that is not a checkpoint: a clear error, and no ONNX file written.
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", str(bad), "--onnx", str(tmp_path / "x.onnx")]) == 1
    assert "bad.pt is not a readable deepmac checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
