"""Numerical parity of converted weights with the official TensorFlow code.

Each check builds an official TF model with random weights *and* random biases, BatchNorm scales,
offsets and moving statistics (so that a mis-mapped bias or statistic shows up), runs it in
inference mode, saves it as a TF2 checkpoint, converts that checkpoint with the public converter
(``deepmac.convert.convert_tf``, i.e. the user path, names included) and runs our model on the
same input. Every check returns ``ParityRow`` s: the max absolute difference and its bound.

Requirements (none of them is a deepmac dependency): TensorFlow with ``tf-keras`` (legacy Keras:
the OD API uses ``tf.keras`` 2), ``tf-models-official`` for Deep-MARC, and the Object Detection
API's ``research/object_detection`` files (``models_dir``: the folder holding
``object_detection/`` or ``research/``; default ``$DEEPMAC_TF_MODELS_DIR``, then
``../tf_od_api`` beside the repository). ``prepare_tensorflow`` must run before TensorFlow is
first imported: it selects legacy Keras and the pure-Python protobuf runtime (the OD API's
generated ``*_pb2.py`` predate protobuf 4).

The checks: every Deep-MAC mask head of the official code (``MaskHeadNetwork``), the Deep-MARC
heads (``DeepMaskHead``), the HG-104 backbone and the CenterNet prediction heads of a whole
``DeepMACMetaArch``, the whole stack on one image in the official order (preprocess, predict,
mask head at boxes, postprocess), a SavedModel export of that model, and the crop op.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEEPMAC_HEAD_NAMES",
    "DEEPMARC_VARIANTS",
    "ParityRow",
    "check_crop_and_resize",
    "check_deepmac_heads",
    "check_deepmarc_heads",
    "check_deepmac_model",
    "environment_line",
    "find_models_dir",
    "format_table",
    "prepare_tensorflow",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Head weights and CenterNet heads: float32 logits after a few dozen convs.
HEAD_BOUND = 1e-4
#: The whole stack (HG-104 + heads + mask head), per the issue.
STACK_BOUND = 1e-3
CROP_BOUND = 1e-5
#: ``gamma`` range of the last BN of each random residual branch (``_scale_residual_branches``).
RESIDUAL_GAMMA = (0.1, 0.3)

#: ``network_type`` strings of the official code with weights (``embedding_projection`` and
#: ``cond_inst*`` are parameter-free and absent from the 2021 revision).
DEEPMAC_HEAD_NAMES = (
    "hourglass10", "hourglass20", "hourglass32", "hourglass52", "hourglass100",
    "hourglass20_uniform_size", "hourglass20_no_shortcut",
    "resnet4", "resnet8", "resnet12", "resnet16", "resnet20", "fully_connected",
)  # fmt: skip
DEEPMARC_VARIANTS = ("default", "hourglass20", "hourglass52", "hourglass100")

# Random values for everything Keras initialises to a constant (kernels keep their random init).
_RANDOM_DRAWS: dict[str, Callable[[np.random.Generator, tuple], np.ndarray]] = {
    "bias": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "gamma": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
    "beta": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "moving_mean": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "moving_variance": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
}


@dataclass
class ParityRow:
    """One compared quantity: ``max |ours - TF|`` against ``bound`` (``None``: informational),
    with ``max |TF|`` for scale."""

    component: str
    max_abs_diff: float
    bound: float | None
    ref_max_abs: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.bound is None or self.max_abs_diff <= self.bound


def format_table(rows: Iterable[ParityRow]) -> str:
    """A Markdown table: component, max abs diff, bound, max |TF|, pass, note."""
    lines = [
        "| component | max abs diff | bound | max abs TF value | pass | note |",
        "|---|---:|---:|---:|:-:|---|",
    ]
    for r in rows:
        bound = "-" if r.bound is None else f"{r.bound:.0e}"
        verdict = "info" if r.bound is None else ("yes" if r.passed else "**NO**")
        lines.append(
            f"| {r.component} | {r.max_abs_diff:.2e} | {bound} | {r.ref_max_abs:.3g} | "
            f"{verdict} | {r.note} |"
        )
    return "\n".join(lines)


def environment_line(models_dir: str | Path | None = None) -> str:
    """Versions the checks ran with, and the OD API folder (call after
    ``prepare_tensorflow``)."""
    import platform

    import tensorflow as tf

    parts = [
        f"Python {platform.python_version()}",
        f"TensorFlow {tf.__version__}",
        f"torch {torch.__version__}",
        f"numpy {np.__version__}",
    ]
    try:
        import tf_keras

        parts.append(f"tf-keras {tf_keras.__version__}")
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        parts.append(f"tf-models-official {version('tf-models-official')}")
    except Exception:  # noqa: BLE001 - informational only
        pass
    root = find_models_dir(models_dir)
    parts.append(f"OD API files: {root}" if root else "OD API files: not found")
    return "; ".join(parts)


def _row(component: str, ours: Any, ref: Any, bound: float | None, note: str = "") -> ParityRow:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise AssertionError(f"{component}: shapes differ, ours {ours.shape} vs TF {ref.shape}")
    diff = float(np.abs(ours - ref).max()) if ref.size else 0.0
    return ParityRow(component, diff, bound, float(np.abs(ref).max()) if ref.size else 0.0, note)


# --------------------------------------------------------------------------- environment


def find_models_dir(models_dir: str | Path | None = None) -> Path | None:
    """The OD API location: the argument, ``$DEEPMAC_TF_MODELS_DIR``, or ``../tf_od_api``
    beside the repository; the folder that directly holds ``object_detection/`` is returned
    (None when there is none)."""
    candidates = [
        models_dir,
        os.environ.get("DEEPMAC_TF_MODELS_DIR"),
        REPO_ROOT.parent / "tf_od_api",
    ]
    for cand in candidates:
        if not cand:
            continue
        for root in (Path(cand) / "research", Path(cand)):
            if (root / "object_detection" / "meta_architectures").is_dir():
                return root.resolve()
    return None


def prepare_tensorflow(models_dir: str | Path | None = None) -> Path:
    """Environment for the official code; call before TensorFlow is first imported.

    Returns:
        The folder holding ``object_detection/`` (put on ``sys.path``).

    Raises:
        FileNotFoundError: no OD API checkout was found.
    """
    if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise RuntimeError(
            "TensorFlow was imported before prepare_tensorflow(): the OD API needs "
            "TF_USE_LEGACY_KERAS=1 set before the first import"
        )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.keras = Keras 2 (tf-keras), as the OD API expects
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The OD API's generated *_pb2.py predate protobuf 4; the Python runtime still reads them.
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    root = find_models_dir(models_dir)
    if root is None:
        raise FileNotFoundError(
            "no Object Detection API checkout found: pass models_dir / --models-dir or set "
            "DEEPMAC_TF_MODELS_DIR to the folder holding research/object_detection (see "
            "../shared/tools/tfref/README.md for the files needed)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def _deepmac_meta_arch_namespace(models_dir: Path) -> dict[str, Any]:
    """``deepmac_meta_arch``'s names: through the shared tfref loader when it is present (it
    falls back to executing only the mask-head definitions when the module cannot be imported),
    else a plain import."""
    import importlib.util

    script = REPO_ROOT.parent / "shared" / "tools" / "tfref" / "measure_tf_heads.py"
    if script.is_file():
        spec = importlib.util.spec_from_file_location("measure_tf_heads", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        args = type(
            "Args", (), {"models_dir": str(models_dir), "deepmac_loader": "auto", "quiet": True}
        )()
        namespace, _, _ = module.load_deepmac(args)
        return namespace
    from object_detection.meta_architectures import deepmac_meta_arch

    return vars(deepmac_meta_arch)


def _fan_in(layer: Any) -> int:
    """Inputs summed into one output value of a Keras layer with a ``kernel``."""
    shape = tuple(layer.kernel.shape)
    if "Transpose" in type(layer).__name__:
        # (k, k, out, in) with stride k: each output pixel reads one kernel tap per input channel.
        return shape[-1]
    return int(np.prod(shape[:-1]))  # Conv2D (kh, kw, in, out), Dense (in, out)


def _randomize(root: Any, seed: int) -> None:
    """Random weights for every layer under ``root`` (a Keras layer or ``tf.Module``).

    Kernels: LeCun normal, ``N(0, 1 / fan_in)``, which keeps every activation of order 1, so
    that the bounds compare float32 rounding at the scale of a trained model. (Keras' own
    initialisers would do for most heads, but Model Garden's ``VarianceScaling(fan_out)`` on the
    1-channel logit layer gives logits around 50 and a rounding floor near the bound.) Biases,
    BN scales/offsets and moving statistics: ``_RANDOM_DRAWS``, so a mis-mapped one shows up.
    """
    rng = np.random.default_rng(seed)
    for layer in [root, *root.submodules]:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and hasattr(kernel, "assign"):
            std = 1.0 / np.sqrt(_fan_in(layer))
            kernel.assign(rng.normal(0.0, std, tuple(kernel.shape)).astype(np.float32))
    for var in root.variables:
        leaf = var.name.split("/")[-1].split(":")[0]
        if leaf in _RANDOM_DRAWS:
            var.assign(_RANDOM_DRAWS[leaf](rng, tuple(var.shape)).astype(np.float32))


def _scale_residual_branches(root: Any, seed: int) -> int:
    """Give the last BN of every hourglass residual branch under ``root`` a small scale,
    ``gamma ~ U(RESIDUAL_GAMMA)``; returns how many blocks were scaled.

    Why: with random kernels and random BN statistics nothing normalises the activations, and
    each residual block adds a branch of the same size as its skip path, so deep hourglasses
    blow up. ``hourglass100`` reached logits of ~90 (Deep-MARC ``hourglass100``: ~75), where
    float32 rounding alone is above the 1e-4 bound: our float32 and our float64 forward of the
    *same* converted weights differed by 1.4e-4, TF float32 and our float64 by 3.6e-4 (a 3.7e-4
    difference between TF and us, i.e. two float32 rounding noises, no mapping error). Trained
    residual networks keep their branches small (the zero-init-residual / SkipInit practice);
    scaling the branch's last BN does the same here, and every value stays random and distinct
    per channel, so a mis-mapped weight still shows. Applies to the ``ResidualBlock`` of the OD
    API and of Model Garden (same attribute names: ``conv_block``, ``conv``, ``norm``, ``skip``).
    """
    rng = np.random.default_rng(seed + 1)
    count = 0
    for layer in [root, *root.submodules]:
        gamma = getattr(getattr(layer, "norm", None), "gamma", None)
        if type(layer).__name__ == "ResidualBlock" and gamma is not None:
            gamma.assign(rng.uniform(*RESIDUAL_GAMMA, tuple(gamma.shape)).astype(np.float32))
            count += 1
    return count


def _float64_spread(model: torch.nn.Module, x: torch.Tensor, ours: np.ndarray) -> float:
    """``max |float32 - float64|`` of our converted ``model`` on ``x``: the float32 rounding
    floor of the comparison (``ours`` is the float32 output). ``model`` is restored to float32."""
    with torch.no_grad():
        exact = model.double()(x.double()).numpy()
    model.float()
    return float(np.abs(exact.reshape(ours.shape) - ours).max())


def _save_checkpoint(folder: Path, **objects: Any) -> Path:
    """``tf.train.Checkpoint(**objects)`` saved under ``folder``; returns the folder."""
    import tensorflow as tf

    tf.train.Checkpoint(**objects).save(str(folder / "ckpt"))
    return folder


def _holder(**attributes: Any) -> Any:
    """A ``tf.Module`` with the given attributes: places a head where the real model has it
    (``model/_mask_net/`` in Deep-MAC, ``model/mask_head/`` in Model Garden)."""
    import tensorflow as tf

    module = tf.Module()
    for name, value in attributes.items():
        setattr(module, name, value)
    return module


def _nchw(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(array), (0, 3, 1, 2))))


#: ``manifest`` arguments: check name -> ``{"model": spec, "options": {...}, "shapes":
#: {TF variable: shape}}``, the variable names of the official models, for TF-free tests.
Manifest = dict[str, dict[str, Any]]


def _convert(
    folder: Path, model: str, manifest: Manifest | None = None, key: str = "", **options: Any
):
    """``convert_tf(folder, model)``; with ``manifest``, also records the source's variable
    shapes under ``key`` (see ``Manifest``)."""
    from deepmac.convert import ConvertOptions, convert_tf
    from deepmac.convert.tf_checkpoint import read_tf_weights

    conversion = convert_tf(folder, model, ConvertOptions(**options))
    if manifest is not None:
        shapes = read_tf_weights(folder).shapes
        manifest[key or model] = {
            "model": model,
            "options": options,
            "shapes": {k: list(v) for k, v in sorted(shapes.items())},
        }
    return conversion


# --------------------------------------------------------------------------------- heads


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
    ns = _deepmac_meta_arch_namespace(root)
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
        _randomize(head, seed)
        features = tf.concat([pix, tf.tile(inst[:, None, None, :], [1, 32, 32, 1])], axis=3)
        _scale_residual_branches(head, seed)
        ref = head(inst, pix, training=False).numpy()  # (B, 32, 32)
        with tempfile.TemporaryDirectory() as tmp:
            conversion = _convert(
                _save_checkpoint(Path(tmp), model=_holder(_mask_net=head)), f"head:{name}", manifest
            )
        x = _nchw(features)
        with torch.no_grad():
            ours = conversion.model(x)[:, 0].numpy()
        spread = _float64_spread(conversion.model, x, ours)
        rows.append(
            _row(
                f"Deep-MAC head {name}",
                ours,
                ref,
                HEAD_BOUND,
                f"{len(conversion.report.consumed)} variables; ours f32 vs f64 {spread:.1e}",
            )
        )
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
        _randomize(head, seed)
        _scale_residual_branches(head, seed)
        ref = head([feats, classes], training=False).numpy()[0]  # (N, 2S, 2S)
        with tempfile.TemporaryDirectory() as tmp:
            conversion = _convert(
                _save_checkpoint(Path(tmp), model=_holder(mask_head=head)),
                "deepmarc",
                manifest,
                f"deepmarc_{variant}",
            )
        x = _nchw(feats[0])
        with torch.no_grad():
            ours = conversion.model(x)[:, 0].numpy()
        spread = _float64_spread(conversion.model, x, ours)
        rows.append(
            _row(
                f"Deep-MARC head {variant}",
                ours,
                ref,
                HEAD_BOUND,
                f"{crop}->{2 * crop}, {len(conversion.report.consumed)} variables; "
                f"ours f32 vs f64 {spread:.1e}",
            )
        )
        log(
            f"  {rows[-1].component}: {rows[-1].max_abs_diff:.2e} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    return rows


# --------------------------------------------------------------------------------- crops


def check_crop_and_resize(
    *, models_dir: str | Path | None = None, num_boxes: int = 64, seed: int = 0
) -> list[ParityRow]:
    """Our ``crop_and_resize`` vs the OD API's ``matmul_crop_and_resize`` (what Deep-MAC calls)
    and vs ``tf.image.crop_and_resize``, on random boxes of which many stick out of the map.

    ``tf.image.crop_and_resize`` zeroes a whole sample that lies outside ``[0, h - 1]``; the
    matmul op (and ours) still interpolates its in-range neighbour. The two therefore differ on
    samples within one pixel outside the map; that difference is reported without a bound.
    """
    import tensorflow as tf

    prepare_tensorflow(models_dir)
    from object_detection.utils import spatial_transform_ops

    from deepmac.ops import crop_and_resize

    rng = np.random.default_rng(seed)
    batch, h, w, channels, out_h, out_w = 2, 17, 23, 5, 7, 9  # odd, non-square: axis mix-ups show
    image = rng.normal(size=(batch, h, w, channels)).astype(np.float32)
    lo = rng.uniform(-0.3, 0.8, size=(batch, num_boxes, 2))
    size = rng.uniform(0.05, 0.6, size=(batch, num_boxes, 2))
    # (y1, x1, y2, x2) normalised; about half of them stick out of the map.
    boxes = np.concatenate([lo, lo + size], axis=-1).astype(np.float32)
    matmul = spatial_transform_ops.matmul_crop_and_resize(
        tf.constant(image), tf.constant(boxes), [out_h, out_w]
    ).numpy()  # (B, N, oh, ow, C)
    native = (
        tf.image.crop_and_resize(
            image, boxes.reshape(-1, 4), np.repeat(np.arange(batch), num_boxes), [out_h, out_w]
        )
        .numpy()
        .reshape(batch, num_boxes, out_h, out_w, channels)
    )

    # Ours takes xyxy boxes in the frame ``image_size``; a unit frame passes the normalised
    # values through unchanged (Deep-MAC's pixel boxes divide exactly: both sides are stride 4
    # multiples of the output map).
    xyxy = boxes[..., [1, 0, 3, 2]]
    ours = (
        crop_and_resize(
            _nchw(image),
            torch.from_numpy(xyxy.reshape(-1, 4)),
            (out_h, out_w),
            torch.arange(batch).repeat_interleave(num_boxes),
            image_size=(1.0, 1.0),
        )
        .numpy()
        .reshape(batch, num_boxes, channels, out_h, out_w)
        .transpose(0, 1, 3, 4, 2)
    )

    # Samples within one pixel outside the map, where the two TF ops disagree by design.
    ys = boxes[..., 0:1] + (boxes[..., 2:3] - boxes[..., 0:1]) * np.linspace(0, 1, out_h)
    xs = boxes[..., 1:2] + (boxes[..., 3:4] - boxes[..., 1:2]) * np.linspace(0, 1, out_w)
    ys, xs = ys * (h - 1), xs * (w - 1)
    fringe_y = ((ys > -1) & (ys < 0)) | ((ys > h - 1) & (ys < h))
    fringe_x = ((xs > -1) & (xs < 0)) | ((xs > w - 1) & (xs < w))
    fringe = (fringe_y[..., :, None] | fringe_x[..., None, :])[..., None]  # (B, N, oh, ow, 1)
    outside = (boxes[..., :2] < 0).any(-1) | (boxes[..., 2:] > 1).any(-1)
    inside = ~outside
    keep = np.broadcast_to(~fringe, native.shape)
    note = f"{num_boxes * batch} boxes, {int(outside.sum())} partly outside"
    return [
        _row(
            "crop_and_resize vs OD API matmul_crop_and_resize (the op Deep-MAC calls)",
            ours,
            matmul,
            CROP_BOUND,
            note,
        ),
        # tf.image.crop_and_resize computes its sample positions with other float32 arithmetic;
        # the first row shows how far TF's two ops are from each other, as the scale of the next.
        _row(
            "tf.image.crop_and_resize vs matmul_crop_and_resize (TF against TF), boxes inside",
            native[inside],
            matmul[inside],
            None,
            f"{int(inside.sum())} boxes",
        ),
        _row(
            "crop_and_resize vs tf.image.crop_and_resize, boxes inside",
            ours[inside],
            native[inside],
            None,
            f"{int(inside.sum())} boxes; same spread as TF vs TF",
        ),
        _row(
            "crop_and_resize vs tf.image.crop_and_resize, all samples but the 1-px fringe",
            ours[keep],
            native[keep],
            None,
            note,
        ),
        _row(
            "crop_and_resize vs tf.image.crop_and_resize, fringe samples (by design)",
            ours[~keep],
            native[~keep],
            None,
            "tf.image zeroes a sample outside [0, h-1]; Deep-MAC's matmul op does not",
        ),
    ]


def check_conventions(*, seed: int = 0) -> list[ParityRow]:
    """Upsampling conventions the converted models rely on (``layouts`` module docstring)."""
    import tensorflow as tf
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 13, 11, 3)).astype(np.float32)
    nearest = tf.keras.layers.UpSampling2D(2)(x).numpy()
    bilinear = tf.image.resize(x, [32, 27], method="bilinear").numpy()
    ours_nearest = F.interpolate(_nchw(x), scale_factor=2, mode="nearest")
    ours_bilinear = F.interpolate(_nchw(x), size=(32, 27), mode="bilinear", align_corners=False)
    to_nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    return [
        _row(
            "UpSampling2D(2) vs F.interpolate(nearest)", to_nhwc(ours_nearest), nearest, CROP_BOUND
        ),
        _row(
            "tf.image.resize(bilinear) vs F.interpolate(bilinear, align_corners=False)",
            to_nhwc(ours_bilinear),
            bilinear,
            CROP_BOUND,
        ),
    ]


# ------------------------------------------------------------------ the whole Deep-MAC


def build_tf_deepmac(
    ns: dict[str, Any], *, mask_head: str = "hourglass52", image_size: int = 512, seed: int = 0
) -> Any:
    """The official ``DeepMACMetaArch``: ``hourglass_104`` feature extractor (BGR, official
    means/stds), 90 classes, CenterNet heads, 32-d instance and 16-d pixel embeddings, the
    ``mask_head`` network, inference mode, random weights (``_randomize``).

    The OD API revision read here builds the embedding heads with ``make_prediction_net``'s
    ``unit_height_conv=True`` default (1x3 kernels). The second stack's (index 1) embedding
    heads are rebuilt with 3x3 kernels, as in the earlier 2021 code the paper describes, so one
    model checks both kernel layouts; inference uses the second stack (3x3). Which of the two
    the released checkpoint has was not seen here; the converter accepts both.
    """
    import tensorflow as tf
    from google.protobuf import text_format
    from object_detection.builders import image_resizer_builder
    from object_detection.core import losses
    from object_detection.meta_architectures import center_net_meta_arch as cn
    from object_detection.models import center_net_hourglass_feature_extractor as hgfe
    from object_detection.protos import image_resizer_pb2

    from deepmac.convert.convert import OFFICIAL_BGR_MEAN, OFFICIAL_BGR_STD

    dm = ns
    resizer = image_resizer_builder.build(
        text_format.Parse(
            f"keep_aspect_ratio_resizer {{ min_dimension: {image_size} max_dimension: {image_size} "
            f"pad_to_max_dimension: true }}",
            image_resizer_pb2.ImageResizer(),
        )
    )
    extractor = hgfe.hourglass_104(
        channel_means=OFFICIAL_BGR_MEAN, channel_stds=OFFICIAL_BGR_STD, bgr_ordering=True
    )
    center = cn.ObjectCenterParams(
        classification_loss=losses.PenaltyReducedLogisticFocalLoss(alpha=2.0, beta=4.0),
        object_center_loss_weight=1.0,
        max_box_predictions=100,
    )
    detection = cn.ObjectDetectionParams(
        localization_loss=losses.L1LocalizationLoss(), scale_loss_weight=0.1, offset_loss_weight=1.0
    )
    deepmac = dm["DeepMACParams"](
        classification_loss=losses.WeightedSigmoidClassificationLoss(),
        dim=32,
        task_loss_weight=5.0,
        pixel_embedding_dim=16,
        allowed_masked_classes_ids=[],
        mask_size=32,
        mask_num_subsamples=-1,
        use_xy=True,
        network_type=mask_head,
        use_instance_embedding=True,
        num_init_channels=64,
        predict_full_resolution_masks=False,
        postprocess_crop_size=256,
        max_roi_jitter_ratio=0.0,
        roi_jitter_mode="default",
        box_consistency_loss_weight=0.0,
    )

    class DeepMACMetaArch(dm["DeepMACMetaArch"]):
        """The official class; stack 1's embedding heads get 3x3 kernels (the heads are
        replaced before Keras tracks them: tracked lists must stay append-only)."""

        def _construct_prediction_heads(self, *args, **kwargs):
            heads = super()._construct_prediction_heads(*args, **kwargs)
            for key, dim in ((dm["INSTANCE_EMBEDDING"], 32), (dm["PIXEL_EMBEDDING"], 16)):
                heads[key][1] = cn.make_prediction_net(dim, unit_height_conv=False)
            return heads

    tf.random.set_seed(seed)
    model = DeepMACMetaArch(
        is_training=False,
        add_summaries=False,
        num_classes=90,
        feature_extractor=extractor,
        image_resizer_fn=resizer,
        object_center_params=center,
        object_detection_params=detection,
        deepmac_params=deepmac,
    )
    pre, shapes = model.preprocess(tf.zeros([1, image_size, image_size, 3]))
    model.predict(pre, shapes)  # builds every variable but the mask net's
    model._mask_net(tf.zeros([1, 32]), tf.zeros([1, 32, 32, 18]), training=False)
    _randomize(model, seed)
    return model


def check_deepmac_model(
    *,
    models_dir: str | Path | None = None,
    image: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    image_size: int = 512,
    backbone_size: int = 256,
    mask_head: str = "hourglass52",
    saved_model: bool = True,
    workdir: str | Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
    manifest: Manifest | None = None,
) -> list[ParityRow]:
    """A random-weight official ``DeepMACMetaArch`` vs our converted Deep-MAC.

    Rows: the HG-104 backbone on a random normalised input (both stacks), every CenterNet head
    on a random feature map (both stacks), then the whole stack on ``image`` (``(S, S, 3)``
    uint8 RGB, ``S = image_size``) in the official order: ``preprocess`` -> ``predict`` ->
    the mask net at ``boxes`` (``(N, 4)`` xyxy pixels; ``_get_mask_head_input``,
    ``_get_instance_embeddings``, ``_mask_net`` as ``_postprocess_sample`` runs them) ->
    ``postprocess`` (top-100 detections and their masks). With ``saved_model``, the model is also
    exported as a SavedModel, converted, and compared tensor by tensor with the checkpoint
    conversion.
    """
    import tensorflow as tf

    root = prepare_tensorflow(models_dir)
    ns = _deepmac_meta_arch_namespace(root)
    if "DeepMACMetaArch" not in ns:
        raise RuntimeError(
            "deepmac_meta_arch.py could not be imported as a module (only its mask-head "
            "definitions were loaded): the whole-model check needs the full OD API "
            "(object_detection/ with its protos) importable"
        )
    rng = np.random.default_rng(seed)
    if image is None:
        image = rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8)
    if boxes is None:
        corner = rng.uniform(0, image_size * 0.6, size=(8, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(8, image_size * 0.4, (8, 2))], 1)
    boxes = np.asarray(boxes, np.float32)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="deepmac_parity_"))
    rows: list[ParityRow] = []

    start = time.perf_counter()
    model = build_tf_deepmac(ns, mask_head=mask_head, image_size=image_size, seed=seed)
    _scale_residual_branches(model, seed)  # backbone and mask-head hourglasses
    _save_checkpoint(workdir / "checkpoint", model=model)
    conversion = _convert(workdir / "checkpoint", "deepmac", manifest, image_size=image_size)
    ours = conversion.model
    log(
        f"  built, saved and converted the TF Deep-MAC ({time.perf_counter() - start:.0f} s): "
        f"{len(conversion.report.consumed)} variables"
    )
    rows.append(
        ParityRow(
            "Deep-MAC checkpoint conversion: every TF variable consumed, every "
            "PyTorch tensor filled",
            float(not conversion.report.ok),
            0.0,
            0.0,
            f"{len(conversion.report.consumed)} variables, "
            f"{len(conversion.report.skipped)} skipped (save counter)",
        )
    )

    # 1. Backbone on a random input that is already normalised (BGR for TF, RGB for ours).
    x = rng.normal(size=(1, backbone_size, backbone_size, 3)).astype(np.float32)
    ref = model._feature_extractor(tf.constant(x))
    with torch.no_grad():
        feats = ours.backbone(_nchw(x[..., ::-1]))
    for s in range(2):
        rows.append(
            _row(
                f"HG-104 backbone, stack {s + 1} output",
                feats[s].permute(0, 2, 3, 1),
                ref[s].numpy(),
                HEAD_BOUND,
                f"{backbone_size}x{backbone_size} input",
            )
        )
    log(f"  backbone: {max(r.max_abs_diff for r in rows[-2:]):.2e}")

    # 2. CenterNet prediction heads on a random feature map.
    f = rng.normal(size=(1, 64, 64, 256)).astype(np.float32)
    ours_heads = {
        "object_center": ours.heatmap_heads,
        "box/scale": ours.size_heads,
        "box/offset": ours.offset_heads,
        ns["INSTANCE_EMBEDDING"]: ours.instance_heads,
        ns["PIXEL_EMBEDDING"]: ours.pixel_heads,
    }
    for key, torch_heads in ours_heads.items():
        for s in range(2):
            ref = model._prediction_head_dict[key][s](tf.constant(f)).numpy()
            with torch.no_grad():
                out = torch_heads[s](_nchw(f)).permute(0, 2, 3, 1)
            kernel = model._prediction_head_dict[key][s].layers[0].kernel.shape[:2]
            rows.append(
                _row(
                    f"CenterNet head {key}, stack {s + 1}",
                    out,
                    ref,
                    HEAD_BOUND,
                    f"{kernel[0]}x{kernel[1]} hidden conv",
                )
            )

    # 3. The whole stack on the image, in the official order.
    start = time.perf_counter()
    stack_rows, detections = _check_stack(model, ours, ns, image, boxes, image_size)
    rows += stack_rows
    log(f"  whole stack: {time.perf_counter() - start:.0f} s")
    rows += _check_predictor(conversion, workdir, image, detections)

    if saved_model:
        start = time.perf_counter()
        rows.append(_check_saved_model(model, conversion, workdir, image_size))
        log(f"  SavedModel: {time.perf_counter() - start:.0f} s")
    return rows


def _check_predictor(
    conversion, workdir: Path, image: np.ndarray, detections: dict[str, np.ndarray]
) -> list[ParityRow]:
    """The user path: ``save_conversion`` -> ``.pt`` -> ``DeepMACPredictor.from_checkpoint``
    (what ``deepmac predict`` loads; mask-head BNs fused) -> ``predict(image)``, against the
    official ``postprocess`` (``detections``: TF top-100 ``scores``, ``boxes`` as xyxy input
    pixels, ``classes`` 0-based). The image is square at the model's input size, so the
    predictor's resize is the identity."""
    from deepmac.convert import save_conversion
    from deepmac.instance_predictor import DeepMACPredictor

    path = workdir / "deepmac_converted.pt"
    save_conversion(conversion, path)
    predictor = DeepMACPredictor.from_checkpoint(path)
    inst = predictor.predict(image)
    same_ids = inst.category_ids.numpy().tolist() == (detections["classes"] + 1).tolist()
    note = (
        "same top-100 order; category id = TF class + 1"
        if same_ids
        else "top-100 order or category ids differ"
    )
    return [
        _row(
            "saved .pt -> DeepMACPredictor (deepmac predict): top-100 scores",
            inst.scores,
            detections["scores"],
            STACK_BOUND,
            note,
        ),
        _row(
            "saved .pt -> DeepMACPredictor (deepmac predict): top-100 boxes (pixels)",
            inst.boxes,
            detections["boxes"],
            4 * STACK_BOUND,
            "mask-head BNs fused",
        ),
    ]


def _check_stack(model, ours, ns, image, boxes, size) -> tuple[list[ParityRow], dict]:
    """Rows of the whole stack on ``image``, and the TF top-100 detections (see
    ``_check_predictor``)."""
    import tensorflow as tf

    pre, shapes = model.preprocess(tf.constant(image[None].astype(np.float32)))
    pred = model.predict(pre, shapes)
    rgb = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    rows = [
        _row(
            "preprocess: BGR, official means/stds (TF) vs our RGB normalize",
            ours.normalize(rgb)[:, [2, 1, 0]].permute(0, 2, 3, 1),
            pre.numpy(),
            HEAD_BOUND,
            f"{size}x{size} image",
        )
    ]
    with torch.no_grad():
        feats = ours.backbone(ours.normalize(rgb))
        maps = {
            "object_center": [h(x) for h, x in zip(ours.heatmap_heads, feats, strict=True)],
            "box/scale": [h(x) for h, x in zip(ours.size_heads, feats, strict=True)],
            "box/offset": [h(x) for h, x in zip(ours.offset_heads, feats, strict=True)],
            ns["INSTANCE_EMBEDDING"]: [
                h(x) for h, x in zip(ours.instance_heads, feats, strict=True)
            ],
            ns["PIXEL_EMBEDDING"]: [h(x) for h, x in zip(ours.pixel_heads, feats, strict=True)],
        }
    names = {
        "object_center": "heatmap logits",
        "box/scale": "box size",
        "box/offset": "box offset",
        ns["INSTANCE_EMBEDDING"]: "instance embedding",
        ns["PIXEL_EMBEDDING"]: "pixel embedding",
    }
    for key, label in names.items():
        for s in range(2):
            rows.append(
                _row(
                    f"whole stack: {label}, stack {s + 1}",
                    maps[key][s].permute(0, 2, 3, 1),
                    pred[key][s].numpy(),
                    STACK_BOUND,
                )
            )

    # Mask logits at the given boxes, exactly as _postprocess_sample composes them.
    norm = boxes[:, [1, 0, 3, 2]] / np.float32(size)  # (N, 4) normalised yxyx
    pixel = pred[ns["PIXEL_EMBEDDING"]][-1][0]
    instance = pred[ns["INSTANCE_EMBEDDING"]][-1][0]
    mask_input = model._get_mask_head_input(tf.constant(norm), pixel)
    inst = model._get_instance_embeddings(tf.constant(norm), instance)
    ref_logits = model._mask_net(inst, mask_input, training=False).numpy()  # (N, 32, 32)
    with torch.no_grad():
        logits = ours.mask_branch(
            maps[ns["PIXEL_EMBEDDING"]][-1],
            maps[ns["INSTANCE_EMBEDDING"]][-1],
            torch.from_numpy(boxes),
            None,
            (size, size),
        )[:, 0]
    rows.append(
        _row(
            "whole stack: mask logits at the image's boxes",
            logits,
            ref_logits,
            STACK_BOUND,
            f"{len(boxes)} boxes, mask head {ours.mask_branch.head_name}",
        )
    )

    # Detections and their masks: official postprocess vs our eval forward (square input, no
    # padding, so the two clipping conventions coincide).
    det = model.postprocess(pred, shapes)
    ours.eval()
    with torch.no_grad():
        out = ours(rgb)
    (d,) = out.detections
    tf_boxes = det["detection_boxes_strided"][0].numpy()[:, [1, 0, 3, 2]] * 4.0  # input px
    tf_classes = det["detection_classes"][0].numpy()
    same = bool((d.labels.numpy() == tf_classes).all())
    note = "same top-100 order and classes" if same else "top-100 order differs"
    rows += [
        _row(
            "whole stack: top-100 detection scores",
            d.scores,
            det["detection_scores"][0].numpy(),
            STACK_BOUND,
            note,
        ),
        _row(
            "whole stack: top-100 detection boxes (input pixels)",
            d.boxes,
            tf_boxes,
            4 * STACK_BOUND,
            "stride 4: 1e-3 output-map pixels",
        ),
        _row(
            "whole stack: detection masks (sigmoid) of the top-100",
            out.mask_logits[-1][:, 0].sigmoid(),
            det["detection_masks"][0].numpy(),
            STACK_BOUND,
        ),
    ]
    detections = {
        "scores": det["detection_scores"][0].numpy(),
        "boxes": tf_boxes,
        "classes": tf_classes.astype(np.int64),
    }
    return rows, detections


def _check_saved_model(model, conversion, workdir: Path, size: int) -> ParityRow:
    """Export ``model`` as a SavedModel (a module holding it as ``_model``, the attribute
    ``exporter_lib_v2`` uses), convert that, and compare every tensor with ``conversion``."""
    import tensorflow as tf

    class Exported(tf.Module):
        def __init__(self, detection_model):
            super().__init__()
            self._model = detection_model

        @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
        def __call__(self, images):
            pre, shapes = self._model.preprocess(images)
            return self._model.postprocess(self._model.predict(pre, shapes), shapes)

    exported = Exported(model)
    tf.saved_model.save(exported, str(workdir / "saved_model"))
    from_saved = _convert(workdir / "saved_model", "deepmac", image_size=size)
    a, b = conversion.model.state_dict(), from_saved.model.state_dict()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    same_keys = set(a) == set(b) and conversion.report.consumed.keys() != set()
    return ParityRow(
        "SavedModel conversion vs checkpoint conversion (every tensor)",
        diff if same_keys else float("inf"),
        0.0,
        0.0,
        f"{len(from_saved.report.consumed)} variables named through the object graph",
    )
