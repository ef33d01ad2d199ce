"""Every official mask head with weights, random, against its converted PyTorch head."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from deepmac.convert.parity.environment import deepmac_meta_arch_namespace, prepare_tensorflow
from deepmac.convert.parity.report import HEAD_BOUND, ParityRow, compare
from deepmac.convert.parity.tf_weights import (
    Manifest,
    convert,
    float64_spread,
    holder,
    nchw,
    randomize,
    save_checkpoint,
    scale_residual_branches,
)

#: ``network_type`` strings of the official code with weights (``embedding_projection`` and
#: ``cond_inst*`` are parameter-free and absent from the 2021 revision).
DEEPMAC_HEAD_NAMES = (
    "hourglass10", "hourglass20", "hourglass32", "hourglass52", "hourglass100",
    "hourglass20_uniform_size", "hourglass20_no_shortcut",
    "resnet4", "resnet8", "resnet12", "resnet16", "resnet20", "fully_connected",
)  # fmt: skip
DEEPMARC_VARIANTS = ("default", "hourglass20", "hourglass52", "hourglass100")


def check_deepmac_heads(
    names: Iterable[str] = DEEPMAC_HEAD_NAMES,
    *,
    models_dir: str | Path | None = None,
    batch: int = 4,
    seed: int = 0,
    log: Callable[[str], None] = print,
    manifest: Manifest | None = None,
) -> list[ParityRow]:
    """Official ``MaskHeadNetwork`` (nc = 64, 32x32 crops of 2 + 16 + 32 channels) vs the
    converted ``head:NAME``."""
    import tensorflow as tf

    root = prepare_tensorflow(models_dir)
    ns = deepmac_meta_arch_namespace(root)
    rows = []
    for name in names:
        start = time.perf_counter()
        tf.random.set_seed(seed)
        head = ns["MaskHeadNetwork"](
            name, num_init_channels=64, use_instance_embedding=True, mask_size=32
        )
        inst = tf.random.normal([batch, 32], seed=seed)
        pix = tf.random.normal([batch, 32, 32, 16], seed=seed + 1)
        yy, xx = tf.meshgrid(tf.linspace(-1.0, 1.0, 32), tf.linspace(-1.0, 1.0, 32), indexing="ij")
        coords = tf.tile(tf.stack([yy, xx], axis=2)[tf.newaxis], [batch, 1, 1, 1])
        pix = tf.concat([coords, pix], axis=3)  # as DeepMACMetaArch._get_mask_head_input
        head(inst, pix, training=False)  # builds the variables
        randomize(head, seed)
        features = tf.concat([pix, tf.tile(inst[:, None, None, :], [1, 32, 32, 1])], axis=3)
        scale_residual_branches(head, seed)
        ref = head(inst, pix, training=False).numpy()  # (B, 32, 32)
        with tempfile.TemporaryDirectory() as tmp:
            conversion = convert(
                save_checkpoint(Path(tmp), model=holder(_mask_net=head)), f"head:{name}", manifest
            )
        rows.append(_compare_head(f"Deep-MAC head {name}", conversion, nchw(features), ref))
        log(
            f"  {rows[-1].component}: {rows[-1].max_abs_diff:.2e} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    return rows


def check_deepmarc_heads(
    variants: Iterable[str] = DEEPMARC_VARIANTS,
    *,
    batch: int = 2,
    crop: int = 32,
    seed: int = 0,
    log: Callable[[str], None] = print,
    manifest: Manifest | None = None,
) -> list[ParityRow]:
    """Model Garden ``DeepMaskHead`` (class-agnostic, 256 FPN channels, ``num_filters`` 256 for
    ``default`` and 64 for the hourglasses as the VOC yamls, ``norm_momentum`` 0.99 /
    ``norm_epsilon`` 1e-3 of ``NormActivation``) vs the converted ``deepmarc`` head."""
    import tensorflow as tf
    from official.projects.deepmac_maskrcnn.modeling.heads import instance_heads

    rows = []
    for variant in variants:
        start = time.perf_counter()
        tf.random.set_seed(seed)
        head = instance_heads.DeepMaskHead(
            num_classes=91, upsample_factor=2, num_convs=4,
            num_filters=256 if variant == "default" else 64, class_agnostic=True,
            convnet_variant=variant,
        )  # fmt: skip
        feats = tf.random.normal([1, batch, crop, crop, 256], seed=seed)
        classes = tf.zeros([1, batch], tf.int32)
        head([feats, classes], training=False)
        randomize(head, seed)
        scale_residual_branches(head, seed)
        ref = head([feats, classes], training=False).numpy()[0]  # (N, 2S, 2S)
        with tempfile.TemporaryDirectory() as tmp:
            conversion = convert(
                save_checkpoint(Path(tmp), model=holder(mask_head=head)),
                "deepmarc",
                manifest,
                f"deepmarc_{variant}",
            )
        rows.append(
            _compare_head(
                f"Deep-MARC head {variant}", conversion, nchw(feats[0]), ref, f"{crop}->{2 * crop}"
            )
        )
        log(
            f"  {rows[-1].component}: {rows[-1].max_abs_diff:.2e} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    return rows


def _compare_head(component: str, conversion, x: torch.Tensor, ref, note: str = "") -> ParityRow:
    """Row of a converted head's ``(N, 1, H, W)`` logits on ``x`` against TF's ``ref``
    ``(N, H, W)``; the note adds the variable count and our float32 rounding floor."""
    with torch.no_grad():
        ours = conversion.model(x)[:, 0].numpy()
    spread = float64_spread(conversion.model, x, ours)
    detail = f"{len(conversion.report.consumed)} variables; ours f32 vs f64 {spread:.1e}"
    return compare(component, ours, ref, HEAD_BOUND, f"{note}, {detail}" if note else detail)
