"""TensorFlow -> PyTorch weight conversion (``deepmac.convert``, ``deepmac convert-tf``).

Two groups:

* TF-free (default suite): kernel layouts against numpy reference convolutions, the name tables
  against the variable names of the official models (``MANIFEST``, recorded from the official TF
  code by ``tools/verify_tf_parity.py --manifest-out``), the conversion report (skipped,
  unmatched, unfilled, mis-shaped), checkpoint-path resolution and the error messages for a
  missing TensorFlow, a wrong path and an unknown ``--model``.
* TF-backed parity (``pytest.importorskip("tensorflow")``; skipped without TensorFlow or
  without the Object Detection API files, see ``deepmac.convert.parity.find_models_dir``): the
  official code is the oracle. The whole-model and all-heads checks are ``slow``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepmac.cli.main import main as cli_main
from deepmac.convert import (
    ConversionError,
    ConvertOptions,
    InMemoryWeights,
    TensorFlowNotInstalled,
    convert_tf,
    convert_weights,
    load_mask_head,
    read_tf_weights,
    save_conversion,
)
from deepmac.convert.convert import parse_model_spec, plan_conversion, transfer_weights
from deepmac.convert.deepmac_names import deepmac_table
from deepmac.convert.layouts import (
    conv_kernel_to_torch,
    conv_transpose_kernel_to_torch,
    dense_kernel_to_torch,
    reverse_input_channels,
    tf_same_padding,
    torch_padding_for_tf_same,
)
from deepmac.convert.tf_checkpoint import canonical_variable_names, resolve_source

MANIFEST_PATH = Path(__file__).parent / "data" / "tf_variable_manifest.json.gz"


def _manifest() -> dict:
    with gzip.open(MANIFEST_PATH, "rt") as f:
        return json.load(f)


MANIFEST = _manifest()


# ------------------------------------------------------------------------------ layouts


def _tf_conv_nhwc(x: np.ndarray, kernel: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """Reference TF ``Conv2D`` (stride 1): NHWC input, HWIO kernel, zero padding ``pad`` (rows,
    cols) on both sides, cross-correlation; float64."""
    kh, kw = kernel.shape[:2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = np.zeros((x.shape[0], h, w, kernel.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", xp[:, i : i + h, j : j + w], kernel[i, j])
    return out


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).double().numpy()


def test_conv_kernel_hwio_to_oihw_matches_a_reference_convolution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)  # (kh, kw, in, out)
    weight = conv_kernel_to_torch(kernel, (4, 3, 3, 3))
    assert weight.shape == (4, 3, 3, 3)
    ours = F.conv2d(_nchw(x), torch.from_numpy(np.ascontiguousarray(weight)), padding=1)
    np.testing.assert_allclose(_nhwc(ours), _tf_conv_nhwc(x, kernel, (1, 1)), atol=1e-5)


def test_unit_height_kernel_is_embedded_in_the_middle_row():
    """``make_prediction_net(unit_height_conv=True)``: a (1, 3) kernel with 'same' padding is a
    3x3 kernel whose other rows are zero."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 6, 5, 4)).astype(np.float32)
    kernel = rng.normal(size=(1, 3, 4, 2)).astype(np.float32)
    weight = conv_kernel_to_torch(kernel, (2, 4, 3, 3))
    assert weight.shape == (2, 4, 3, 3)
    assert not weight[:, :, [0, 2]].any()
    ours = F.conv2d(_nchw(x), torch.from_numpy(weight), padding=1)
    np.testing.assert_allclose(_nhwc(ours), _tf_conv_nhwc(x, kernel, (0, 1)), atol=1e-5)


def test_dense_kernel_io_to_oi():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5)).astype(np.float32)
    kernel = rng.normal(size=(5, 7)).astype(np.float32)  # (in, out)
    ours = F.linear(
        torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(dense_kernel_to_torch(kernel)))
    )
    np.testing.assert_allclose(ours.numpy(), x @ kernel, atol=1e-5)


def test_conv_transpose_kernel_matches_a_reference_upsampling():
    """Deep-MARC's ``Conv2DTranspose(k = s = f, 'valid')``: output pixel ``(f*i + a, f*j + b)``
    is ``x[i, j] @ K[a, b]`` with the kernel stored ``(kh, kw, out, in)``."""
    rng = np.random.default_rng(3)
    f, c_in, c_out = 2, 3, 4
    x = rng.normal(size=(1, 3, 4, c_in)).astype(np.float32)
    kernel = rng.normal(size=(f, f, c_out, c_in)).astype(np.float32)
    ref = np.zeros((1, 3 * f, 4 * f, c_out))
    for a in range(f):
        for b in range(f):
            ref[:, a::f, b::f] = np.einsum("nhwc,oc->nhwo", x, kernel[a, b])
    weight = conv_transpose_kernel_to_torch(kernel)
    assert weight.shape == (c_in, c_out, f, f)
    ours = F.conv_transpose2d(_nchw(x), torch.from_numpy(np.ascontiguousarray(weight)), stride=f)
    np.testing.assert_allclose(_nhwc(ours), ref, atol=1e-5)


def test_reversed_input_channels_read_rgb_like_the_tf_kernel_reads_bgr():
    rng = np.random.default_rng(4)
    rgb = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
    weight = reverse_input_channels(conv_kernel_to_torch(kernel, (2, 3, 3, 3)))
    ours = F.conv2d(_nchw(rgb), torch.from_numpy(np.ascontiguousarray(weight)), padding=1)
    np.testing.assert_allclose(
        _nhwc(ours), _tf_conv_nhwc(rgb[..., ::-1], kernel, (1, 1)), atol=1e-5
    )


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected", "torch_pad"),
    [
        (8, 3, 2, (0, 1), None),  # even size, stride 2: the extra pixel goes after
        (7, 3, 2, (1, 1), 1),
        (8, 1, 2, (0, 0), 0),  # the hourglass's 1x1 stride-2 skip convs
        (5, 3, 1, (1, 1), 1),
        (9, 7, 1, (3, 3), 3),
        (10, 7, 2, (2, 3), None),
    ],
)
def test_tf_same_padding(size, kernel, stride, expected, torch_pad):
    assert tf_same_padding(size, kernel, stride) == expected
    assert torch_padding_for_tf_same(size, kernel, stride) == torch_pad


def test_layout_functions_reject_wrong_ranks():
    with pytest.raises(ValueError, match="4-D"):
        conv_kernel_to_torch(np.zeros((3, 3, 2)), (2, 2, 3, 3))
    with pytest.raises(ValueError, match="2-D"):
        dense_kernel_to_torch(np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match="4-D"):
        conv_transpose_kernel_to_torch(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=">= 1"):
        tf_same_padding(0, 3, 1)


# --------------------------------------------------------------------------- name tables


def test_manifest_covers_every_official_model():
    expected = {
        "deepmac",
        *(f"head:{n}" for n in (
            "hourglass10", "hourglass20", "hourglass32", "hourglass52", "hourglass100",
            "hourglass20_uniform_size", "hourglass20_no_shortcut", "resnet4", "resnet8",
            "resnet12", "resnet16", "resnet20", "fully_connected")),
        *(f"deepmarc_{v}" for v in ("default", "hourglass20", "hourglass52", "hourglass100")),
    }  # fmt: skip
    assert expected <= set(MANIFEST)


@pytest.mark.parametrize("key", sorted(MANIFEST))
def test_name_tables_map_every_official_variable_onto_every_tensor(key):
    """Shapes only, on the meta device: every variable of the official model is consumed or
    skipped with a reason, every parameter and buffer of ours is filled (``num_batches_tracked``
    excepted), and every shape agrees after the layout transform."""
    entry = MANIFEST[key]
    weights = InMemoryWeights.from_shapes(entry["shapes"])
    options = ConvertOptions(**entry["options"])
    plan = plan_conversion(weights, entry["model"], options, src=key)
    with torch.device("meta"):
        model = plan.build()
    report = transfer_weights(weights, plan.table, model, load=False)
    assert report.ok, report.problems()
    assert set(report.skipped.values()) <= {"checkpoint save counter"}
    assert len(report.consumed) + len(report.skipped) == len(entry["shapes"])
    tensors = model.state_dict()
    assert set(report.consumed.values()) | set(report.defaulted) == set(tensors)
    assert all(k.endswith("num_batches_tracked") for k in report.defaulted)


def test_deepmac_checkpoint_hyper_parameters_are_read_from_shapes():
    entry = MANIFEST["deepmac"]
    plan = plan_conversion(
        InMemoryWeights.from_shapes(entry["shapes"]),
        "deepmac",
        ConvertOptions(**entry["options"]),
        src="x",
    )
    model = plan.config["model"]
    assert (model["num_classes"], model["mask_head"], model["num_init_channels"]) == (
        90,
        "hourglass52",
        64,
    )
    assert (model["pixel_embedding_dim"], model["instance_embedding_dim"]) == (16, 32)
    assert model["use_xy"] and model["use_instance_embedding"]
    assert model["category_ids"][:3] == [1, 2, 3] and model["class_names"][0] == "person"
    assert plan.config["data"]["image_size"] == entry["options"]["image_size"]


def test_saved_model_root_and_backbone_names():
    table = deepmac_table("hourglass52")
    name = (
        "_feature_extractor/_network/hourglass_network/1/inner_block/0/decoder_block/0/norm/gamma"
    )
    for root in ("model/", "_model/"):
        assert table.map(root + name).target == (
            "backbone.hourglasses.1.inner_block.decoder_block.0.norm.weight"
        )
    assert (
        table.map("model/_prediction_head_dict/box.Sscale/0/layer_with_weights-1/kernel").target
        == "size_heads.0.2.weight"
    )
    assert table.map("model/_feature_extractor/.OPTIMIZER_SLOT/optimizer/m").skipped
    assert table.map("other/thing/kernel").skipped.startswith("outside the deepmac model")


# ------------------------------------------------------------------------------ reports


def _resnet4_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random values under the official ``resnet4`` head's names (positive BN variances)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape in MANIFEST["head:resnet4"]["shapes"].items():
        value = rng.normal(size=shape)
        arrays[name] = (np.abs(value) + 0.5 if name.endswith("moving_variance") else value).astype(
            np.float32
        )
    return arrays


def test_values_land_in_the_right_tensors():
    arrays = _resnet4_weights()
    conversion = convert_weights(InMemoryWeights(arrays), "head:resnet4")
    state = conversion.model.state_dict()
    report = conversion.report
    for name, key in report.consumed.items():
        leaf = name.rpartition("/")[2]
        value = arrays[name].transpose(3, 2, 0, 1) if leaf == "kernel" else arrays[name]
        np.testing.assert_array_equal(state[key].numpy(), value, err_msg=f"{name} -> {key}")
    assert report.layouts["HWIO->OIHW"] == sum(n.endswith("kernel") for n in report.consumed)


def test_report_lists_unconsumed_unfilled_and_mismatched_weights():
    arrays = _resnet4_weights()
    extra = dict(arrays)
    extra["model/_mask_net/_net/extra_layer/kernel"] = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ConversionError) as err:
        convert_weights(InMemoryWeights(extra), "head:resnet4")
    # The head-selection dry run reports names relative to the MaskHeadNetwork.
    assert list(err.value.report.unmatched) == ["_net/extra_layer/kernel"]
    assert "_net/extra_layer/kernel: no head scope owns" in str(err.value)

    dropped = dict(arrays)
    name = next(n for n in dropped if n.endswith("moving_variance"))
    del dropped[name]
    with pytest.raises(ConversionError, match="not filled") as err:
        convert_weights(InMemoryWeights(dropped), "head:resnet4")
    assert len(err.value.report.unfilled) == 1
    assert err.value.report.unfilled[0].endswith("running_var")

    wrong = dict(arrays)
    bias = next(n for n in wrong if n.endswith("project_out/bias"))
    wrong[bias] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match="shape mismatches") as err:
        convert_weights(InMemoryWeights(wrong), "head:resnet4")
    assert list(err.value.report.mismatched) == ["project_out/bias"]  # relative, as above


def test_unfilled_targets_are_listed_by_name():
    """``transfer_weights`` itself (below the head selection): a missing variable leaves its
    target unfilled and named."""
    arrays = _resnet4_weights()
    plan = plan_conversion(InMemoryWeights(arrays), "head:resnet4", ConvertOptions(), src="x")
    model = plan.build()
    name = next(n for n in arrays if n.endswith("project_out/bias"))
    del arrays[name]
    report = transfer_weights(InMemoryWeights(arrays), plan.table, model)
    assert report.unfilled == ["project_out.bias"]
    assert not report.ok and "project_out.bias" in report.problems()


def test_optimizer_state_is_skipped_with_a_reason():
    arrays = _resnet4_weights()
    arrays["model/_mask_net/_net/input_layer/kernel/.OPTIMIZER_SLOT/optimizer/m"] = np.zeros(
        (1, 1, 50, 64), np.float32
    )
    arrays["optimizer/iter"] = np.zeros((), np.float32)
    conversion = convert_weights(InMemoryWeights(arrays), "head:resnet4")
    assert set(conversion.report.skipped.values()) >= {"optimizer slot variable", "optimizer state"}
    assert "skipped" in conversion.report.summary()


def test_mask_head_checkpoint_round_trip(tmp_path):
    conversion = convert_weights(InMemoryWeights(_resnet4_weights()), "head:resnet4")
    save_conversion(conversion, tmp_path / "head.pt")
    head = load_mask_head(tmp_path / "head.pt")
    x = torch.randn(2, 50, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(head(x), conversion.model(x))


# --------------------------------------------------------------------- reading, errors


def test_canonical_names_prefer_attribute_paths_over_keras_lists():
    """A SavedModel reaches a variable both as ``_model/.../kernel`` and through
    ``variables/3``; the attribute path wins."""
    nodes = [
        ([(1, "_model"), (4, "variables")], []),  # 0: root
        ([(2, "_mask_net")], []),  # 1
        ([(3, "kernel")], []),  # 2
        ([], [("VARIABLE_VALUE", "variables/3/.ATTRIBUTES/VARIABLE_VALUE")]),  # 3: the variable
        ([(3, "3")], []),  # 4: a Keras list holding it
    ]
    names = canonical_variable_names(nodes)
    assert names == {"variables/3/.ATTRIBUTES/VARIABLE_VALUE": "_model/_mask_net/kernel"}


def test_canonical_names_escape_slashes_and_dots():
    nodes = [([(1, "box/scale")], []), ([(2, "a.b")], []), ([], [("VARIABLE_VALUE", "k")])]
    assert canonical_variable_names(nodes) == {"k": "box.Sscale/a..b"}


def test_resolve_source_layouts(tmp_path):
    saved = tmp_path / "exported" / "saved_model"
    ckpt = tmp_path / "exported" / "checkpoint"
    saved.mkdir(parents=True)
    ckpt.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    assert resolve_source(saved) == ("saved_model", str(saved / "variables" / "variables"))
    (ckpt / "ckpt-0.index").write_bytes(b"")
    (ckpt / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/ckpt-0"\n')
    # The exported-model folder prefers its checkpoint; a foreign absolute path is re-rooted.
    assert resolve_source(tmp_path / "exported") == ("checkpoint", str(ckpt / "ckpt-0"))
    assert resolve_source(ckpt / "ckpt-0") == ("checkpoint", str(ckpt / "ckpt-0"))


def test_wrong_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="SavedModel folder"):
        resolve_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither saved_model.pb"):
        resolve_source(tmp_path)


def test_missing_tensorflow_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "ckpt-0.index").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)  # import fails
    with pytest.raises(TensorFlowNotInstalled, match="pip install tensorflow"):
        read_tf_weights(tmp_path / "ckpt-0")
    with pytest.raises(TensorFlowNotInstalled):
        convert_tf(tmp_path / "ckpt-0", "deepmac")


def test_unknown_model_spec_is_rejected_before_reading():
    for spec in ("detr", "head:", "head:no_such_head", "deepmac:x"):
        with pytest.raises(ConversionError, match="unknown"):
            parse_model_spec(spec)
    with pytest.raises(ConversionError, match="unknown --model"):
        convert_tf("/does/not/exist", "maskrcnn")
    assert parse_model_spec("head:deepmarc_hourglass52") == ("head", "deepmarc_hourglass52")


def test_cli_reports_errors_with_exit_status_1(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out.pt")
    assert cli_main(["convert-tf", str(tmp_path / "nope"), "--model", "deepmac", "--out", out]) == 1
    assert "SavedModel folder" in capsys.readouterr().err
    assert cli_main(["convert-tf", str(tmp_path), "--model", "yolo", "--out", out]) == 1
    assert "unknown --model" in capsys.readouterr().err
    (tmp_path / "ckpt-0.index").write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)
    prefix = str(tmp_path / "ckpt-0")
    assert cli_main(["convert-tf", prefix, "--model", "deepmac", "--out", out]) == 1
    assert "needs TensorFlow" in capsys.readouterr().err
    assert not Path(out).exists()


# ----------------------------------------------------------- parity with the official TF code


@pytest.fixture(scope="module")
def official_tf():
    """The parity module, with TensorFlow prepared for the OD API (skips without TF or the OD
    API files). ``prepare_tensorflow`` must run before TensorFlow is imported."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed")
    from deepmac.convert import parity

    if parity.find_models_dir() is None:
        pytest.skip("no Object Detection API files (set DEEPMAC_TF_MODELS_DIR)")
    parity.prepare_tensorflow()
    pytest.importorskip("tensorflow")
    return parity


def _assert_rows(rows):
    failed = [(r.component, r.max_abs_diff, r.bound) for r in rows if not r.passed]
    assert not failed, failed


def test_tf_crop_and_resize_parity(official_tf):
    rows = official_tf.check_crop_and_resize()
    _assert_rows(rows)
    assert rows[0].bound == 1e-5


def test_tf_upsampling_conventions(official_tf):
    _assert_rows(official_tf.check_conventions())


def test_tf_small_deepmac_heads_parity(official_tf):
    rows = official_tf.check_deepmac_heads(["hourglass10", "resnet4"], log=lambda _: None)
    _assert_rows(rows)
    assert all(r.bound == 1e-4 for r in rows)


def test_tf_deepmarc_default_head_parity(official_tf):
    pytest.importorskip("official.projects.deepmac_maskrcnn.modeling.heads.instance_heads")
    _assert_rows(official_tf.check_deepmarc_heads(["default"], log=lambda _: None))


def test_tf_cli_converts_a_checkpoint(official_tf, tmp_path, capsys):
    """``deepmac convert-tf`` on a real TF checkpoint of an official head; the written file
    loads with ``load_mask_head`` and reproduces the TF logits."""
    import tensorflow as tf

    from deepmac.convert.parity.environment import deepmac_meta_arch_namespace
    from deepmac.convert.parity.tf_weights import holder, randomize

    ns = deepmac_meta_arch_namespace(official_tf.find_models_dir())
    head = ns["MaskHeadNetwork"](
        "hourglass10", num_init_channels=16, use_instance_embedding=True, mask_size=16
    )
    inst, pix = tf.random.normal([2, 8]), tf.random.normal([2, 16, 16, 6])
    head(inst, pix, training=False)
    randomize(head, 0)
    ref = head(inst, pix, training=False).numpy()
    tf.train.Checkpoint(model=holder(_mask_net=head)).save(str(tmp_path / "ckpt"))
    out = tmp_path / "head.pt"
    assert (
        cli_main(
            [
                "convert-tf",
                str(tmp_path),
                "--model",
                "head:hourglass10",
                "--mask-size",
                "16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "unmatched: 0, unfilled: 0" in capsys.readouterr().out
    features = tf.concat([pix, tf.tile(inst[:, None, None, :], [1, 16, 16, 1])], axis=3)
    with torch.no_grad():
        ours = load_mask_head(out)(_nchw(features.numpy()))[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.slow
def test_tf_all_heads_parity(official_tf):
    _assert_rows(official_tf.check_deepmac_heads(log=lambda _: None))
    pytest.importorskip("official.projects.deepmac_maskrcnn.modeling.heads.instance_heads")
    _assert_rows(official_tf.check_deepmarc_heads(log=lambda _: None))


@pytest.mark.slow
def test_tf_whole_deepmac_parity(official_tf, tmp_path):
    """HG-104 + CenterNet heads + embeddings + hourglass52 mask head, composed as the official
    code does, on a random 256x256 image (the full check, on a real image at 512, is
    ``tools/verify_tf_parity.py``)."""
    rows = official_tf.check_deepmac_model(
        image_size=256, backbone_size=128, workdir=tmp_path, log=lambda _: None
    )
    _assert_rows(rows)
