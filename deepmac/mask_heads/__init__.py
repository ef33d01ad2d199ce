"""Mask-head zoo: Deep-MAC, paper-only and Deep-MARC heads behind one registry.

Every head maps ``(N, C_in, S, S)`` RoI features to ``(N, 1, S_out, S_out)`` mask logits
(``S_out = S`` for Deep-MAC heads, ``2 S`` for Deep-MARC heads). Build one with
``build_mask_head(name, in_channels, ...)``; ``MASK_HEADS`` maps names to ``MaskHeadEntry``
(a builder plus metadata). Paper: Birodkar et al., ICCV 2021, arXiv 2104.00613, Sec. 6-7.

Meaning of ``num_init_channels`` (``nc``) per family:

* Deep-MAC hourglass / resnet / bottleneck / fully_connected: TF ``num_init_channels`` (64).
* ``cond_inst{D}``: hidden width of the dynamic convs (TF passes ``num_init_channels``).
* ``deepmarc_*``: Model Garden ``DeepMaskHead.num_filters``; default 256 for ``deepmarc_default``
  (Model Garden's default) and 64 for ``deepmarc_hourglass*`` (the VOC hg52 yaml).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from deepmac.mask_heads.bottleneck import BOTTLENECK_HEADS, build_bottleneck_head
from deepmac.mask_heads.deepmarc import DeepMaskHead
from deepmac.mask_heads.fusion import fold_batch_norm, fuse_for_inference
from deepmac.mask_heads.hourglass import HOURGLASS_HEADS, HourglassMaskHead, hourglass_depth
from deepmac.mask_heads.layers import MaskHead, count_params, num_params_total
from deepmac.mask_heads.mlp import FullyConnectedMaskHead
from deepmac.mask_heads.param_free import CondInstHead, EmbeddingProjectionHead
from deepmac.mask_heads.resnet import RESNET_HEAD_STAGES, build_resnet_head

__all__ = [
    "MASK_HEADS",
    "MaskHead",
    "MaskHeadEntry",
    "build_mask_head",
    "count_params",
    "fold_batch_norm",
    "format_heads_table",
    "fuse_for_inference",
    "hourglass_depth",
    "num_params_total",
]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class MaskHeadEntry:
    """A registry entry: ``builder(in_channels, num_init_channels, mask_size, **kwargs)``.

    Attributes:
        builder: returns the ``nn.Module``.
        depth: convs on the main path as §2.3 counts them (hourglass: ``hourglass_depth``;
            resnetN: N; bottleneck: 3 per block; fully_connected: its 2 dense layers;
            cond_inst{D}: D; embedding_projection: 1; deepmarc: the convnet variant's depth,
            the deconv and the final 1x1 not counted).
        paper: where the paper uses it ("-" for code-only heads).
        family: "deepmac", "paper" (not in the official code) or "deepmarc".
        default_channels: ``num_init_channels`` used when the caller passes ``None``.
        typical_in_channels: the input channels the head is made for, when fixed (the
            Deep-MARC heads read 256-channel FPN features); the heads table counts with it.
        param_free: no trainable parameters; ``in_channels`` must follow a channel layout.
    """

    builder: Builder
    depth: int
    paper: str
    family: str = "deepmac"
    default_channels: int = 64
    typical_in_channels: int | None = None
    param_free: bool = False

    def __call__(
        self, in_channels: int, num_init_channels: int, mask_size: int, **kwargs: object
    ) -> nn.Module:
        return self.builder(in_channels, num_init_channels, mask_size, **kwargs)


def _hourglass(name: str) -> Builder:
    def build(in_channels: int, nc: int, mask_size: int) -> nn.Module:
        return HourglassMaskHead(in_channels, name=name, num_init_channels=nc)

    return build


def _resnet(name: str, num_dilated: int = 0) -> Builder:
    def build(in_channels: int, nc: int, mask_size: int) -> nn.Module:
        return build_resnet_head(name, in_channels, nc, num_dilated=num_dilated)

    return build


def _bottleneck(name: str) -> Builder:
    def build(in_channels: int, nc: int, mask_size: int) -> nn.Module:
        return build_bottleneck_head(name, in_channels, nc)

    return build


def _fully_connected(in_channels: int, nc: int, mask_size: int) -> nn.Module:
    return FullyConnectedMaskHead(in_channels, num_init_channels=nc, mask_size=mask_size)


def _embedding_projection(in_channels: int, nc: int, mask_size: int) -> nn.Module:
    return EmbeddingProjectionHead(in_channels)


def _cond_inst(depth: int) -> Builder:
    def build(in_channels: int, nc: int, mask_size: int) -> nn.Module:
        return CondInstHead(in_channels, depth=depth, channels=nc)

    return build


def _deepmarc(variant: str) -> Builder:
    def build(
        in_channels: int, nc: int, mask_size: int, *, num_convs: int = 4, upsample_factor: int = 2
    ) -> nn.Module:
        return DeepMaskHead(
            in_channels,
            convnet_variant=variant,
            num_filters=nc,
            num_convs=num_convs,
            upsample_factor=upsample_factor,
        )

    return build


_HG_DEPTHS = {
    "hourglass10": 10,
    "hourglass20": 20,
    "hourglass32": 32,
    "hourglass52": 52,
    "hourglass100": 100,
    "hourglass20_uniform_size": 20,
    "hourglass20_no_shortcut": 20,
}
_HG_PAPER = {
    "hourglass10": "Fig. 3, Tab. 3",
    "hourglass20": "Fig. 3, Tab. 3-5",
    "hourglass32": "Fig. 3",
    "hourglass52": "Fig. 3, Tab. 4, 7",
    "hourglass100": "Fig. 3, Tab. 8",
    "hourglass20_uniform_size": "Tab. 5 (No ED)",
    "hourglass20_no_shortcut": "Tab. 5 (No LRS)",
}
_RESNET_PAPER = {"resnet4": "Fig. 3, Tab. 3, 4, 7", "resnet20": "Fig. 3, Tab. 5"}
_CODE_ONLY = "- (code only)"


def _make_registry() -> dict[str, MaskHeadEntry]:
    heads: dict[str, MaskHeadEntry] = {}
    for name in HOURGLASS_HEADS:
        heads[name] = MaskHeadEntry(_hourglass(name), _HG_DEPTHS[name], _HG_PAPER[name])
    for name, (_, blocks) in RESNET_HEAD_STAGES.items():
        heads[name] = MaskHeadEntry(
            _resnet(name), 2 * sum(blocks), _RESNET_PAPER.get(name, "Fig. 3")
        )
    heads["fully_connected"] = MaskHeadEntry(_fully_connected, 2, "App. A.2.2")
    heads["embedding_projection"] = MaskHeadEntry(
        _embedding_projection, 1, _CODE_ONLY, param_free=True
    )
    for depth in (1, 2, 3):
        heads[f"cond_inst{depth}"] = MaskHeadEntry(
            _cond_inst(depth), depth, _CODE_ONLY, param_free=True
        )
    for num_dilated in (0, 10, 20):
        heads[f"resnet20_dilated{num_dilated}"] = MaskHeadEntry(
            _resnet("resnet20", num_dilated), 20, "Tab. 6", family="paper"
        )
    for name, (basic, _) in BOTTLENECK_HEADS.items():
        depth = 3 * sum(RESNET_HEAD_STAGES[basic][1])
        heads[name] = MaskHeadEntry(_bottleneck(name), depth, "Fig. 3", family="paper")
    marc_paper = {
        "default": "Tab. 2",
        "hourglass20": "Tab. 2",
        "hourglass52": "Tab. 2, 8",
        "hourglass100": _CODE_ONLY,
    }
    for variant, depth in (
        ("default", 4),
        ("hourglass20", 20),
        ("hourglass52", 52),
        ("hourglass100", 100),
    ):
        heads[f"deepmarc_{variant}"] = MaskHeadEntry(
            _deepmarc(variant),
            depth,
            marc_paper[variant],
            family="deepmarc",
            default_channels=256 if variant == "default" else 64,
            typical_in_channels=256,
        )
    return heads


MASK_HEADS: dict[str, MaskHeadEntry] = _make_registry()


def build_mask_head(
    name: str,
    in_channels: int,
    num_init_channels: int | None = None,
    mask_size: int = 32,
    **kwargs: object,
) -> nn.Module:
    """Build a registered mask head.

    Args:
        name: a key of ``MASK_HEADS`` (e.g. ``"hourglass52"``, ``"resnet4"``,
            ``"deepmarc_hourglass52"``).
        in_channels: channels ``C_in`` of the ``(N, C_in, S, S)`` crops (50 in Deep-MAC, 256 for
            Deep-MARC's FPN RoI features).
        num_init_channels: ``nc`` (see the module docstring); ``None`` means the entry's default
            (64, or 256 for ``deepmarc_default``).
        mask_size: crop side ``S``; only ``fully_connected`` depends on it.
        **kwargs: head-specific options (``deepmarc_*``: ``num_convs``, ``upsample_factor``).

    Returns:
        The head, mapping ``(N, C_in, S, S)`` to ``(N, 1, S_out, S_out)`` logits.

    Raises:
        ValueError: unknown ``name`` (with close matches), or invalid channel arguments.
        TypeError: a ``kwargs`` option the head does not accept.
    """
    entry = MASK_HEADS.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(MASK_HEADS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown mask head {name!r}.{hint} Valid names: {', '.join(MASK_HEADS)}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    nc = entry.default_channels if num_init_channels is None else num_init_channels
    if not isinstance(nc, int) or nc < 1:
        raise ValueError(f"num_init_channels must be a positive int, got {nc!r}")
    options = [
        p.name
        for p in inspect.signature(entry.builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise TypeError(
            f"mask head {name!r} got unexpected options {unknown}; it accepts {options or 'none'}"
        )
    return entry(in_channels, nc, mask_size, **kwargs)


def format_heads_table(
    in_channels: int = 50, num_init_channels: int | None = None, mask_size: int = 32
) -> str:
    """A plain-text table of every registered head: name, family, depth, params, paper use.

    ``deepmarc_*`` heads are counted with 256 input channels (FPN RoI features); the
    parameter-free heads have 0 parameters for any valid ``in_channels``.
    """
    rows = [("name", "family", "depth", "params", "paper")]
    for name, entry in MASK_HEADS.items():
        if entry.param_free:
            params = "0"
        else:
            channels = entry.typical_in_channels or in_channels
            params = (
                f"{count_params(build_mask_head(name, channels, num_init_channels, mask_size)):,}"
            )
        rows.append((name, entry.family, str(entry.depth), params, entry.paper))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(w) if i in (2, 3) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"(params at in_channels={in_channels}, 256 for deepmarc_*; mask_size={mask_size})"
    )
    return "\n".join(lines)
