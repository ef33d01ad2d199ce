"""Mask-head zoo: registry sweep (timm style), TF parameter parity, hand-checked blocks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepmac.mask_heads import (
    MASK_HEADS,
    build_mask_head,
    count_params,
    fold_batch_norm,
    format_heads_table,
    fuse_for_inference,
    hourglass_depth,
    num_params_total,
)
from deepmac.mask_heads.hourglass import ResidualBlock
from deepmac.mask_heads.param_free import cond_inst_num_params
from deepmac.mask_heads.resnet import KerasBasicBlock, dilated_conv_indices

REPO_ROOT = Path(__file__).resolve().parents[1]
TF_HEADS_JSON = REPO_ROOT.parent / "shared" / "reference" / "tf_heads.json"
ALL_HEADS = sorted(MASK_HEADS)
SMALL_NC = 8  # narrow heads keep the sweep fast; parity tests use the real widths


def in_channels_for(name: str, nc: int = SMALL_NC) -> int:
    """A valid ``in_channels`` for ``name``: Deep-MAC's 50, FPN's 256 or a param-free layout."""
    if name == "embedding_projection":
        return 32  # 16 pixel + 16 instance channels
    if name.startswith("cond_inst"):
        depth = int(name.removeprefix("cond_inst"))
        pixel = nc if depth == 1 else 18
        return pixel + cond_inst_num_params(pixel, nc, depth)
    return 256 if name.startswith("deepmarc") else 50


def build_small(name: str, mask_size: int = 32) -> nn.Module:
    return build_mask_head(name, in_channels_for(name), SMALL_NC, mask_size)


def valid_sizes(head: nn.Module) -> list[int]:
    if head.fixed_size is not None:
        return [head.fixed_size]
    return [s for s in (16, 32) if s % head.size_multiple == 0]


@pytest.mark.parametrize("name", ALL_HEADS)
def test_output_shape_and_invalid_sizes(name: str) -> None:
    torch.manual_seed(0)
    head = build_small(name).eval()
    scale = 2 if name.startswith("deepmarc") else 1
    for size in (16, 32):
        x = torch.randn(2, head.in_channels, size, size)
        if size in valid_sizes(head):
            out = head(x)
            assert out.shape == (2, 1, scale * size, scale * size)
            assert torch.isfinite(out).all()
        else:
            with pytest.raises(ValueError, match=f"{size}x{size}"):
                head(x)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_empty_batch(name: str) -> None:
    head = build_small(name)
    size = valid_sizes(head)[0]
    scale = 2 if name.startswith("deepmarc") else 1
    for mode in (True, False):
        head.train(mode)
        out = head(torch.zeros(0, head.in_channels, size, size))
        assert out.shape == (0, 1, scale * size, scale * size)
    for buf in head.buffers():
        assert torch.isfinite(buf.float()).all()


@pytest.mark.parametrize("name", ALL_HEADS)
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    head = build_small(name).train()
    size = min(valid_sizes(head))
    x = torch.randn(3, head.in_channels, size, size, requires_grad=True)
    out = head(x)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, param in head.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", ALL_HEADS)
def test_same_seed_same_init(name: str) -> None:
    torch.manual_seed(123)
    first = build_small(name).state_dict()
    torch.manual_seed(123)
    second = build_small(name).state_dict()
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    "name",
    [
        "hourglass20",
        "resnet4",
        "fully_connected",
        "cond_inst2",
        "embedding_projection",
        "deepmarc_default",
    ],
)
def test_bad_input_names_expected_and_found(name: str) -> None:
    head = build_small(name)
    c = head.in_channels
    with pytest.raises(ValueError, match=rf"\(N, {c}, S, S\).*\(2, {c}, 32\)"):
        head(torch.zeros(2, c, 32))
    with pytest.raises(ValueError, match=rf"\(N, {c}, S, S\).*got {c + 1} channels"):
        head(torch.zeros(2, c + 1, 32, 32))
    with pytest.raises(ValueError, match="square"):
        head(torch.zeros(2, c, 32, 16))


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(ValueError, match=r"'hourglass52'.*Valid names: .*resnet4"):
        build_mask_head("hourglas52", 50)


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"'resnet4' got unexpected options \['upsample_factor'\]"):
        build_mask_head("resnet4", 50, upsample_factor=2)
    head = build_mask_head("deepmarc_default", 256, 16, num_convs=2, upsample_factor=4)
    assert head(torch.zeros(1, 256, 8, 8)).shape == (1, 1, 32, 32)


def test_param_free_channel_layouts_are_validated() -> None:
    with pytest.raises(ValueError, match="equal size"):
        build_mask_head("embedding_projection", 33)
    with pytest.raises(ValueError, match=r"cond_inst2 .*in_channels=50"):
        build_mask_head("cond_inst2", 50)
    with pytest.raises(ValueError, match="129"):  # depth 1: nc + nc + 1
        build_mask_head("cond_inst1", 50)


def _tf_entries() -> list[tuple[str, dict]]:
    if not TF_HEADS_JSON.is_file():
        return []
    data = json.loads(TF_HEADS_JSON.read_text())
    return [(k, v) for k, v in data.items() if k.split("/")[0] in ("deepmac", "deepmarc")]


def _our_name(key: str, entry: dict) -> str:
    suite, head = key.split("/")[0], entry.get("head_type", key.split("/")[1].split("@")[0])
    return f"deepmarc_{head}" if suite == "deepmarc" else head


@pytest.mark.parametrize(
    "key, entry",
    _tf_entries()
    or [pytest.param(None, None, marks=pytest.mark.skip(reason=f"{TF_HEADS_JSON} is absent"))],
)
def test_tf_parameter_parity(key: str, entry: dict) -> None:
    name = _our_name(key, entry)
    if "error" in entry and name not in MASK_HEADS:
        pytest.skip(f"TF could not build {key}: {entry['error']}")
    if "error" in entry and "input_hw" not in entry:
        pytest.skip(f"TF could not build {key} (older code revision): {entry['error']}")
    nc = entry.get("num_init_channels", entry.get("num_filters"))
    head = build_mask_head(name, entry["in_channels"], nc).eval()
    if "error" in entry:  # TF fails for this crop size; we must refuse it too
        height, width = entry["input_hw"]
        with pytest.raises(ValueError, match="multiple of"):
            head(torch.zeros(1, entry["in_channels"], height, width))
        return
    assert count_params(head) == entry["params"]
    assert num_params_total(head) == entry["params_total"]


def test_params_total_convention() -> None:
    # TF params_total = trainable + BN moving mean/var (2 * channels per BN); num_batches_tracked
    # is not counted.
    head = build_mask_head("deepmarc_default", 256)
    bn_channels = sum(m.num_features for m in head.modules() if isinstance(m, nn.BatchNorm2d))
    assert num_params_total(head) == count_params(head) + 2 * bn_channels


@pytest.mark.parametrize(
    "name, depth",
    [
        ("hourglass10", 10),
        ("hourglass20", 20),
        ("hourglass32", 32),
        ("hourglass52", 52),
        ("hourglass100", 100),
        ("hourglass20_uniform_size", 20),
        ("hourglass20_no_shortcut", 20),
    ],
)
def test_hourglass_depth(name: str, depth: int) -> None:
    head = build_mask_head(name, 50, SMALL_NC)
    assert hourglass_depth(head) == depth == MASK_HEADS[name].depth


def test_bn_momentum_and_eps_follow_keras() -> None:
    def bns(name: str, channels: int = 50) -> set[tuple[float, float]]:
        head = build_mask_head(name, channels, SMALL_NC)
        return {
            (round(m.momentum, 6), m.eps) for m in head.modules() if isinstance(m, nn.BatchNorm2d)
        }

    assert bns("hourglass20") == {(0.9, 1e-5)}
    assert bns("resnet8") == {(0.01, 1.001e-5)}
    assert bns("bottleneck_resnet12") == {(0.01, 1.001e-5)}
    assert bns("deepmarc_default", 256) == {(0.01, 1e-3)}
    # Deep-MARC hourglass: [HG] BN inside, Model Garden BN after the deconv.
    assert bns("deepmarc_hourglass20", 256) == {(0.9, 1e-5), (0.01, 1e-3)}
    # Keras momentum 0.1: the moving mean becomes 0.1 * old + 0.9 * batch mean.
    block = ResidualBlock(4, 4).train()
    x = torch.randn(8, 4, 5, 5) + 3.0
    block(x)
    conv_out = block.conv_block.conv(x)
    torch.testing.assert_close(block.conv_block.norm.running_mean, 0.9 * conv_out.mean((0, 2, 3)))


def test_hourglass_residual_block_by_hand() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(3, 5, stride=2, skip_conv=True).eval()
    for bn in block.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 2)
            bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)

    def bn(m: nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0, m.eps)

    y = F.relu(
        bn(block.conv_block.norm, F.conv2d(x, block.conv_block.conv.weight, stride=2, padding=1))
    )
    y = bn(block.norm, F.conv2d(y, block.conv.weight, padding=1))
    skip = bn(block.skip.norm, F.conv2d(x, block.skip.conv.weight, stride=2))
    expected = F.relu(y + skip)
    assert expected.shape == (2, 5, 4, 4)
    torch.testing.assert_close(block(x), expected)
    # The 1x1 stride-2 skip samples the even indices (§8.20).
    torch.testing.assert_close(
        F.conv2d(x, block.skip.conv.weight, stride=2),
        F.conv2d(x[:, :, ::2, ::2], block.skip.conv.weight),
    )


def test_keras_basic_block_relu_before_add() -> None:
    torch.manual_seed(0)
    block = KerasBasicBlock(4, 6, conv_shortcut=True).eval()
    x = torch.randn(2, 4, 7, 7)
    pre = F.relu(block.preact_bn(x))
    shortcut = block.shortcut(pre)
    out = block(x)
    # The residual branch ends in a ReLU, and nothing follows the add.
    assert (out - shortcut >= -1e-6).all()
    assert (out < 0).any()
    ident = KerasBasicBlock(6, 6, conv_shortcut=False).eval()
    assert (ident(out) - out >= -1e-6).all()


def test_keras_style_init() -> None:
    torch.manual_seed(0)
    head = build_mask_head("resnet4", 50)
    conv = head.blocks[0].conv1  # (128, 64, 3, 3)
    limit = math.sqrt(6 / (64 * 9 + 128 * 9))  # glorot_uniform
    assert conv.weight.abs().max() <= limit
    assert conv.weight.abs().max() > 0.95 * limit
    assert torch.count_nonzero(head.input_layer.bias) == 0
    marc = build_mask_head("deepmarc_default", 256)
    deconv = marc.deconv.weight  # (256 in, 256 out, 2, 2): Keras fan_out = in * k * k
    assert deconv.std().item() == pytest.approx(math.sqrt(2 / (256 * 4)), rel=0.05)


def test_dilated_resnet20() -> None:
    assert dilated_conv_indices(0, 20) == frozenset()
    assert dilated_conv_indices(10, 20) == frozenset(range(1, 20, 2))
    assert dilated_conv_indices(20, 20) == frozenset(range(20))
    counts = {}
    for k in (0, 10, 20):
        head = build_mask_head(f"resnet20_dilated{k}", 50, SMALL_NC)
        convs = [m for m in head.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len(convs) == 20
        counts[k] = sum(c.dilation == (2, 2) for c in convs)
        assert count_params(head) == count_params(build_mask_head("resnet20", 50, SMALL_NC))
    assert counts == {0: 0, 10: 10, 20: 20}
    # 0 dilated is ResNet-20 itself, init included (table6's row reuses table5's run).
    torch.manual_seed(0)
    plain = build_mask_head("resnet20", 50, SMALL_NC).state_dict()
    torch.manual_seed(0)
    undilated = build_mask_head("resnet20_dilated0", 50, SMALL_NC).state_dict()
    assert list(plain) == list(undilated)
    assert all(torch.equal(plain[k], undilated[k]) for k in plain)


def test_embedding_projection_is_a_dot_product() -> None:
    head = build_mask_head("embedding_projection", 6)
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(head(x)[:, 0], (x[:, :3] * x[:, 3:]).sum(1))


def test_cond_inst_matches_tf_parameter_layout() -> None:
    torch.manual_seed(0)
    pixel, nc, depth = 3, 4, 3
    num_params = cond_inst_num_params(pixel, nc, depth)
    assert num_params == 3 * 4 + 4 * 4 + 4 + 4 * 2 + 1
    feats = torch.randn(2, pixel, 5, 5)
    params = torch.randn(2, num_params)
    x = torch.cat([feats, params[:, :, None, None].expand(-1, -1, 5, 5)], dim=1)
    head = build_mask_head(f"cond_inst{depth}", pixel + num_params, nc)
    assert head.pixel_channels == pixel
    # TF order per layer: (in, out) row-major weights, then out biases.
    expected = []
    for i in range(2):
        out, start, cin = feats[i].permute(1, 2, 0), 0, pixel  # (S, S, P)
        for layer, cout in enumerate((nc, nc, 1)):
            w = params[i, start : start + cin * cout].view(cin, cout)
            b = params[i, start + cin * cout : start + cin * cout + cout]
            start += cin * cout + cout
            out = out @ w + b
            out = out.relu() if layer < depth - 1 else out
            cin = cout
        expected.append(out.permute(2, 0, 1))
    torch.testing.assert_close(head(x), torch.stack(expected))


def test_fully_connected_needs_its_mask_size() -> None:
    head = build_mask_head("fully_connected", 50, SMALL_NC, mask_size=16)
    assert head(torch.randn(2, 50, 16, 16)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="16x16 crops, got 32x32"):
        head(torch.randn(2, 50, 32, 32))


def test_fold_batch_norm_conv_and_deconv() -> None:
    torch.manual_seed(0)
    for conv in (nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.ConvTranspose2d(3, 5, 2, 2)):
        bn = nn.BatchNorm2d(5, eps=1e-3).eval()
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
        x = torch.randn(2, 3, 6, 6)
        torch.testing.assert_close(fold_batch_norm(conv, bn)(x), bn(conv(x)))


@pytest.mark.parametrize("name", ALL_HEADS)
def test_fuse_for_inference_matches_eval(name: str) -> None:
    torch.manual_seed(0)
    head = build_small(name).train()
    size = valid_sizes(head)[-1]
    x = torch.randn(4, head.in_channels, size, size)
    head(x)  # give the BNs non-trivial running statistics
    head.eval()
    with torch.no_grad():
        expected = head(x)
        fused = fuse_for_inference(head)
        got = fused(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) or name.startswith(
        ("resnet", "bottleneck")
    )  # pre-activation BNs stay
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert head.training is False and all(p.requires_grad for p in head.parameters())


def test_format_heads_table_lists_every_head() -> None:
    table = format_heads_table()
    for name in MASK_HEADS:
        assert name in table
    assert "23,454,593" in table  # hourglass52 at 50 -> 64 channels
