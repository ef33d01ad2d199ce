"""Convert TensorFlow Deep-MAC / Deep-MARC weights into deepmac PyTorch checkpoints.

    conversion = convert_tf("deepmac_1024x1024_coco17/checkpoint", "deepmac")
    print(conversion.report.summary())
    save_conversion(conversion, "deepmac_coco.pt")     # load_model("deepmac_coco.pt") works

``model`` is ``"deepmac"`` (the whole CenterNet Deep-MAC: HG104 backbone, CenterNet heads,
embedding heads, mask head; a ``deepmac`` checkpoint for ``load_model`` and
``BoxPromptedSegmenter.from_checkpoint``), ``"deepmarc"`` (the Deep-MARC mask head of a Model
Garden checkpoint) or ``"head:NAME"`` (one mask head, e.g. ``head:hourglass100`` out of a Deep-MAC
checkpoint, or ``head:deepmarc_hourglass52``). Mask heads are written as ``mask_head``
checkpoints, loaded with ``load_mask_head``.

How it works: the family's plan reads hyper-parameters from variable shapes (and picks the mask
head whose name table consumes exactly the checkpoint's mask-net variables), builds the PyTorch
model, maps every variable through the family's ``NameTable``, converts its layout
(``KERNEL_LAYOUTS`` by the receiving module's type) and copies it. The ``ConversionReport``
accounts for every source variable (consumed or skipped, with the reason) and every target
tensor (filled or defaulted); anything unmatched, unfilled or of the wrong shape is an error that
lists the names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepmac.config import ExperimentConfig, ModelConfig
from deepmac.convert.deepmac_names import (
    DEEPMAC_PROBES,
    DEEPMAC_ROOTS,
    MASK_NET_PREFIX,
    coco_label_map_90,
    deepmac_table,
)
from deepmac.convert.deepmarc_names import DEEPMARC_PROBES, DEEPMARC_ROOTS, deepmarc_table
from deepmac.convert.heads_names import (
    FC_OUTPUT_KERNEL,
    HEAD_INPUT_KERNELS,
    TF_DEEPMAC_HEADS,
    head_kind,
    mask_head_scopes,
)
from deepmac.convert.names import COMMON_SKIPS, NameTable
from deepmac.convert.tf_checkpoint import InMemoryWeights, WeightSource, read_tf_weights
from deepmac.convert.transfer import (
    KERNEL_LAYOUTS,
    ConversionError,
    ConversionReport,
    transfer_weights,
)
from deepmac.mask_heads import MASK_HEADS, build_mask_head

__all__ = [
    "KERNEL_LAYOUTS",
    "MODEL_SPECS",
    "OFFICIAL_BGR_MEAN",
    "OFFICIAL_BGR_STD",
    "Conversion",
    "ConversionError",
    "ConversionReport",
    "ConvertOptions",
    "Plan",
    "convert_tf",
    "convert_weights",
    "convertible_heads",
    "load_mask_head",
    "parse_model_spec",
    "plan_conversion",
    "save_conversion",
    "transfer_weights",
]

#: What ``--model`` accepts.
MODEL_SPECS = ("deepmac", "deepmarc", "head:NAME")

#: ``center_net_deepmac_*.config``: ``channel_means`` / ``channel_stds`` on 0..255 BGR input.
OFFICIAL_BGR_MEAN = (104.01362025, 114.03422265, 119.9165958)
OFFICIAL_BGR_STD = (73.6027665, 69.89082075, 70.9150767)

# ------------------------------------------------------------------------------- plans


@dataclass
class ConvertOptions:
    """User options of a conversion.

    Attributes:
        mask_head: Deep-MAC mask head name; None = the one whose name table matches.
        mask_size: crop side ``S`` (not stored in TF weights, except by ``fully_connected``).
        image_size: input side the model expects (``data.image_size`` of the checkpoint;
            1024 for ``deepmac_1024x1024_coco17``).
        tf_root: root prefix of the model's variables, when it is not a family default.
    """

    mask_head: str | None = None
    mask_size: int = 32
    image_size: int = 1024
    tf_root: str | None = None


@dataclass
class Plan:
    """What a family decided from the source shapes: the table, how to build the target model,
    and what the checkpoint says about it (``model_type``, ``config``)."""

    table: NameTable
    build: Callable[[], nn.Module]
    model_type: str
    config: dict[str, Any]
    description: str


def _relative_shapes(weights: WeightSource, table: NameTable) -> dict[str, tuple[int, ...]]:
    rel = {}
    for name, shape in weights.shapes.items():
        stripped = table.strip_root(name)
        if stripped is not None:
            rel[stripped] = shape
    if not rel:
        sample = ", ".join(sorted(weights.shapes)[:5])
        raise ConversionError(
            f"no variable is under the {table.family} roots {list(table.roots)} "
            f"(first names: {sample}); pick another --model, or --tf-root"
        )
    return rel


def _probe(shapes: Mapping[str, tuple[int, ...]], key: str, what: str, family: str) -> tuple:
    if key not in shapes:
        raise ConversionError(
            f"{family}: {what} is read from the variable {key!r}, which is not in the source; "
            f"is this a {family} checkpoint?"
        )
    return shapes[key]


def _head_dims(head_shapes: Mapping[str, tuple[int, ...]], family: str) -> tuple[int, int]:
    """``(in_channels, num_init_channels)`` of a ``MaskHeadNetwork`` from its first kernel."""
    for key in HEAD_INPUT_KERNELS:
        if key in head_shapes:
            _, _, in_channels, width = head_shapes[key]
            return in_channels, width
    raise ConversionError(
        f"{family}: no mask-head input kernel ({' or '.join(HEAD_INPUT_KERNELS)}) in the source"
    )


def _head_mask_size(name: str, head_shapes: Mapping[str, tuple[int, ...]], default: int) -> int:
    if head_kind(name) != "fully_connected" or FC_OUTPUT_KERNEL not in head_shapes:
        return default
    side = math.isqrt(head_shapes[FC_OUTPUT_KERNEL][1])
    if side * side != head_shapes[FC_OUTPUT_KERNEL][1]:
        raise ConversionError(f"fully_connected output {head_shapes[FC_OUTPUT_KERNEL]} is not S*S")
    return side


def _head_table(name: str, roots: tuple[str, ...]) -> NameTable:
    return NameTable("head", roots, mask_head_scopes(name), skips=COMMON_SKIPS)


def select_deepmac_head(
    head_shapes: Mapping[str, tuple[int, ...]],
    in_channels: int,
    num_init_channels: int,
    mask_size: int,
    requested: str | None = None,
) -> str:
    """The one Deep-MAC mask head whose table consumes exactly ``head_shapes`` (names relative to
    a ``MaskHeadNetwork``) and fills every tensor of ``build_mask_head(name, ...)``.

    Raises:
        ConversionError: none fits (the closest and its problems are named), or several do.
    """
    candidates = [requested] if requested else list(TF_DEEPMAC_HEADS)
    source = InMemoryWeights.from_shapes(dict(head_shapes))
    reports = {}
    for name in candidates:
        size = _head_mask_size(name, head_shapes, mask_size)
        with torch.device("meta"):  # shapes only: no memory, no init cost
            head = build_mask_head(name, in_channels, num_init_channels, size)
        reports[name] = transfer_weights(source, _head_table(name, ("",)), head, load=False)
    fitting = [name for name, report in reports.items() if report.ok]
    if len(fitting) == 1:
        return fitting[0]
    if not fitting:
        closest = min(reports, key=lambda n: reports[n].num_problems)
        raise ConversionError(
            f"no Deep-MAC mask head ({', '.join(candidates)}) matches the checkpoint's mask net "
            f"(in_channels={in_channels}, num_init_channels={num_init_channels}); closest is "
            f"{closest}:\n{reports[closest].problems()}",
            reports[closest],
        )
    raise ConversionError(f"several mask heads match the checkpoint: {fitting}; pass --mask-head")


def plan_deepmac(weights: WeightSource, options: ConvertOptions, src: str) -> Plan:
    """The whole Deep-MAC (``DeepMACMetaArch`` with an HG104 feature extractor)."""
    roots = (options.tf_root,) if options.tf_root else DEEPMAC_ROOTS
    rel = _relative_shapes(weights, deepmac_table(TF_DEEPMAC_HEADS[0], roots))
    dims = {
        name: _probe(rel, key, name, "deepmac")[axis]
        for name, (key, axis) in DEEPMAC_PROBES.items()
        if name != "instance_embedding_dim" or key in rel
    }
    instance_dim = dims.get("instance_embedding_dim", 0)
    head_shapes = {
        k[len(MASK_NET_PREFIX) :]: s for k, s in rel.items() if k.startswith(MASK_NET_PREFIX)
    }
    in_channels, nc = _head_dims(head_shapes, "deepmac")
    xy_channels = in_channels - dims["pixel_embedding_dim"] - instance_dim
    if xy_channels not in (0, 2):
        raise ConversionError(
            f"the mask net reads {in_channels} channels, which is not "
            f"[2 coordinates +] {dims['pixel_embedding_dim']} pixel + {instance_dim} instance "
            f"embedding channels"
        )
    head = select_deepmac_head(head_shapes, in_channels, nc, options.mask_size, options.mask_head)
    category_ids, class_names = coco_label_map_90(dims["num_classes"])
    rgb_mean, rgb_std = OFFICIAL_BGR_MEAN[::-1], OFFICIAL_BGR_STD[::-1]
    model_cfg = ModelConfig(
        type="deepmac",
        num_classes=dims["num_classes"],
        category_ids=category_ids,
        class_names=class_names,
        backbone="hourglass104",
        mask_head=head,
        num_init_channels=nc,
        mask_size=_head_mask_size(head, head_shapes, options.mask_size),
        pixel_embedding_dim=dims["pixel_embedding_dim"],
        instance_embedding_dim=instance_dim or ModelConfig.instance_embedding_dim,
        use_xy=xy_channels == 2,
        use_instance_embedding=instance_dim > 0,
        embedding_head_channels=dims["embedding_head_channels"],
        pixel_mean=rgb_mean,
        pixel_std=rgb_std,
    )
    cfg = ExperimentConfig(name=f"converted-{Path(src).name}", model=model_cfg)
    cfg.data.image_size = options.image_size

    def build() -> nn.Module:
        from deepmac.models.families import build_model  # noqa: PLC0415 - heavy, only when used

        return build_model(model_cfg)

    return Plan(
        table=deepmac_table(head, roots),
        build=build,
        model_type="deepmac",
        config=cfg.to_dict(),
        description=(
            f"Deep-MAC: hourglass104 backbone, {dims['num_classes']} classes, mask head {head} "
            f"(nc={nc}, {in_channels} input channels, mask {model_cfg.mask_size}), "
            f"input {options.image_size}"
        ),
    )


def _mask_head_plan(
    table: NameTable, name: str, in_channels: int, nc: int, mask_size: int, **head_options: int
) -> Plan:
    config = {
        "mask_head": {
            "name": name,
            "in_channels": in_channels,
            "num_init_channels": nc,
            "mask_size": mask_size,
            "options": head_options,
        }
    }
    return Plan(
        table=table,
        build=lambda: build_mask_head(name, in_channels, nc, mask_size, **head_options),
        model_type="mask_head",
        config=config,
        description=f"mask head {name} (in_channels={in_channels}, nc={nc}, "
        f"mask_size={mask_size}{''.join(f', {k}={v}' for k, v in head_options.items())})",
    )


def plan_deepmarc(
    weights: WeightSource, options: ConvertOptions, src: str, variant: str | None = None
) -> Plan:
    """The Deep-MARC ``DeepMaskHead`` (variant from the weights, or ``deepmarc_<variant>``)."""
    roots = (options.tf_root,) if options.tf_root else DEEPMARC_ROOTS
    table = deepmarc_table(roots)
    rel = _relative_shapes(weights, table)
    kh, kw, num_filters, _ = _probe(rel, DEEPMARC_PROBES["deconv"], "the deconv", "deepmarc")
    if kh != kw:
        raise ConversionError(f"deepmarc: non-square upsampling kernel {(kh, kw)}")
    outputs = _probe(rel, DEEPMARC_PROBES["mask_regressor"], "mask logits", "deepmarc")[3]
    if outputs != 1:
        raise ConversionError(
            f"deepmarc: the mask head predicts {outputs} class-specific masks; deepmac's "
            f"DeepMaskHead is class-agnostic (class_agnostic: true in every Deep-MARC yaml)"
        )
    num_convs = len({k.split("/")[1] for k in rel if re.match(r"_convs/\d+/kernel$", k)})
    first = rel.get(DEEPMARC_PROBES["first_conv_default"]) or _probe(
        rel, DEEPMARC_PROBES["first_conv_hourglass"], "the input width", "deepmarc"
    )
    in_channels = first[2]
    options_by_variant = {"deepmarc_default": {"num_convs": num_convs}}
    candidates = (
        [f"deepmarc_{variant}"]
        if variant
        else [n for n, e in MASK_HEADS.items() if e.family == "deepmarc"]
    )
    source = InMemoryWeights.from_shapes(rel)
    reports = {}
    for name in candidates:
        head_options = {"upsample_factor": kh, **options_by_variant.get(name, {})}
        with torch.device("meta"):
            head = build_mask_head(
                name, in_channels, num_filters, options.mask_size, **head_options
            )
        reports[name] = transfer_weights(
            source, NameTable("deepmarc", ("",), table.scopes), head, load=False
        )
    fitting = [n for n, r in reports.items() if r.ok]
    if len(fitting) != 1:
        closest = min(reports, key=lambda n: reports[n].num_problems)
        raise ConversionError(
            f"deepmarc: {len(fitting)} of {candidates} match the checkpoint's mask head; "
            f"closest {closest}:\n{reports[closest].problems()}",
            reports[closest],
        )
    name = fitting[0]
    head_options = {"upsample_factor": kh, **options_by_variant.get(name, {})}
    return _mask_head_plan(table, name, in_channels, num_filters, options.mask_size, **head_options)


def plan_head(weights: WeightSource, options: ConvertOptions, src: str, name: str) -> Plan:
    """One mask head: a Deep-MAC ``MaskHeadNetwork`` (under ``_mask_net/`` of a Deep-MAC
    checkpoint) or a Deep-MARC head (``deepmarc_<variant>``)."""
    entry = MASK_HEADS.get(name)
    if entry is not None and entry.family == "deepmarc":
        return plan_deepmarc(weights, options, src, variant=name.removeprefix("deepmarc_"))
    head_kind(name)  # a clear error for heads the official code does not have
    roots = (
        (options.tf_root,)
        if options.tf_root
        else tuple(r + MASK_NET_PREFIX for r in DEEPMAC_ROOTS) + (MASK_NET_PREFIX,)
    )
    table = _head_table(name, roots)
    rel = _relative_shapes(weights, table)
    in_channels, nc = _head_dims(rel, "head")
    select_deepmac_head(rel, in_channels, nc, options.mask_size, requested=name)
    return _mask_head_plan(
        table, name, in_channels, nc, _head_mask_size(name, rel, options.mask_size)
    )


def plan_conversion(weights: WeightSource, model: str, options: ConvertOptions, src: str) -> Plan:
    """Dispatch a ``--model`` spec (``MODEL_SPECS``) to its family's plan.

    Raises:
        ConversionError: unknown spec, or the weights do not fit it.
    """
    family, head = parse_model_spec(model)
    plans: dict[str, Callable[[], Plan]] = {
        "deepmac": lambda: plan_deepmac(weights, options, src),
        "deepmarc": lambda: plan_deepmarc(weights, options, src),
        "head": lambda: plan_head(weights, options, src, head),
    }
    return plans[family]()


def convertible_heads() -> list[str]:
    """The ``NAME`` s of ``head:NAME``: Deep-MAC heads with weights, then Deep-MARC variants."""
    return [*TF_DEEPMAC_HEADS, *(n for n, e in MASK_HEADS.items() if e.family == "deepmarc")]


def parse_model_spec(model: str) -> tuple[str, str]:
    """``(family, head name)`` of a ``--model`` spec (``MODEL_SPECS``); the head name is empty
    except for ``head:NAME``. Checked before any file is read.

    Raises:
        ConversionError: an unknown family or head name.
    """
    family, _, head = model.partition(":")
    heads = convertible_heads()
    if family not in ("deepmac", "deepmarc", "head") or (family == "head") != bool(head):
        raise ConversionError(
            f"unknown --model {model!r}; expected one of {', '.join(MODEL_SPECS)} with NAME one "
            f"of {', '.join(heads)}"
        )
    if family == "head" and head not in heads:
        raise ConversionError(
            f"unknown mask head {head!r} in --model {model!r}; convertible heads: "
            f"{', '.join(heads)}"
        )
    return family, head


# ------------------------------------------------------------------------------- API


@dataclass
class Conversion:
    """A converted model with its checkpoint metadata and report."""

    model: nn.Module
    model_type: str
    config: dict[str, Any]
    report: ConversionReport
    source: dict[str, str]
    description: str


def convert_weights(
    weights: WeightSource,
    model: str,
    options: ConvertOptions | None = None,
    *,
    src: str = "<memory>",
) -> Conversion:
    """Convert already-opened weights (``read_tf_weights`` or ``InMemoryWeights``).

    Raises:
        ConversionError: unknown ``model`` spec, weights that do not fit, or a report with
            unmatched, unfilled or mis-shaped tensors (``err.report`` has the lists).
    """
    options = options or ConvertOptions()
    plan = plan_conversion(weights, model, options, src)
    target = plan.build()
    report = transfer_weights(weights, plan.table, target)
    if not report.ok:
        raise ConversionError(
            f"the TF weights of {src} do not fill {plan.description} exactly:\n{report.problems()}",
            report,
        )
    source = {"path": str(src), "model_spec": model}
    for attr in ("kind", "prefix"):
        if hasattr(weights, attr):
            source[attr] = getattr(weights, attr)
    return Conversion(target.eval(), plan.model_type, plan.config, report, source, plan.description)


def convert_tf(src: str | Path, model: str, options: ConvertOptions | None = None) -> Conversion:
    """Read a TF2 checkpoint or SavedModel (``read_tf_weights``) and convert it.

    Raises:
        ConversionError: an unknown ``model`` spec (checked first), or see ``convert_weights``.
        FileNotFoundError: nothing readable at ``src`` (checked before TensorFlow is imported).
        TensorFlowNotInstalled: TensorFlow is not importable.
    """
    parse_model_spec(model)  # a bad spec fails before TensorFlow is imported
    weights = read_tf_weights(src)
    conversion = convert_weights(weights, model, options, src=str(src))
    for name, reason in weights.non_variables.items():
        conversion.report.skipped[name] = reason
    return conversion


def save_conversion(conversion: Conversion, out: str | Path) -> None:
    """Write the converted model as a deepmac checkpoint (``engine.save_checkpoint`` format:
    ``model_type``, ``config``, ``model``; step 0, no optimizer). The report and source are in
    ``extra``."""
    from deepmac.engine.checkpoint import save_checkpoint  # noqa: PLC0415

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        out,
        model=conversion.model,
        optimizer=None,
        scheduler=None,
        step=0,
        config=conversion.config,
        model_type=conversion.model_type,
        extra={"converted_from": conversion.source, "conversion": conversion.report.to_dict()},
    )


def load_mask_head(path: str | Path | dict) -> nn.Module:
    """A mask head written by ``save_conversion`` (``model_type == "mask_head"``), in eval mode.

    Returns:
        The ``build_mask_head`` module: ``(N, C_in, S, S)`` features -> ``(N, 1, S_out, S_out)``
        logits.
    """
    from deepmac.engine.checkpoint import load_checkpoint  # noqa: PLC0415

    ckpt = (
        path if isinstance(path, dict) else load_checkpoint(path, expected_model_type="mask_head")
    )
    spec = ckpt["config"]["mask_head"]
    head = build_mask_head(
        spec["name"],
        spec["in_channels"],
        spec["num_init_channels"],
        spec["mask_size"],
        **spec.get("options", {}),
    )
    head.load_state_dict(ckpt["model"])
    return head.eval()
