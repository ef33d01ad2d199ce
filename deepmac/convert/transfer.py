"""Copying TF variables into a PyTorch model through a ``NameTable``, with a full account.

``transfer_weights`` maps every source variable to a ``state_dict`` key, converts its layout by
the type of the module that receives it (``KERNEL_LAYOUTS``) and copies it; the
``ConversionReport`` says where every variable went and which tensors were left unfilled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from deepmac.convert.layouts import (
    conv_kernel_to_torch,
    conv_transpose_kernel_to_torch,
    dense_kernel_to_torch,
    reverse_input_channels,
)
from deepmac.convert.names import NameTable
from deepmac.convert.tf_checkpoint import WeightSource

__all__ = ["KERNEL_LAYOUTS", "ConversionError", "ConversionReport", "transfer_weights"]


#: TF ``kernel`` layout -> PyTorch, chosen by the type of the module that receives it.
KERNEL_LAYOUTS: dict[type, tuple[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]]] = {
    nn.Conv2d: ("HWIO->OIHW", conv_kernel_to_torch),
    nn.ConvTranspose2d: ("HWOI->IOHW", conv_transpose_kernel_to_torch),
    nn.Linear: ("IO->OI", dense_kernel_to_torch),
}

_LISTED = 20  # names listed per category in messages


class ConversionError(ValueError):
    """The TF weights do not fit the requested PyTorch model; ``report`` (when set) has the
    full lists."""

    def __init__(self, message: str, report: ConversionReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def _listing(items: Mapping[str, str] | list[str], limit: int = _LISTED) -> str:
    lines = [f"{k}: {v}" for k, v in items.items()] if isinstance(items, Mapping) else list(items)
    more = f"\n    ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "".join(f"\n    {line}" for line in lines[:limit]) + more


@dataclass
class ConversionReport:
    """Where every source variable and every target tensor went.

    Attributes:
        family: the name table used.
        consumed: source name -> target key.
        skipped: source name -> why it is deliberately not converted.
        unmatched: source name -> why no target receives it (an error).
        unfilled: target keys no source variable filled (an error).
        defaulted: target key -> why it keeps its default (``num_batches_tracked``).
        mismatched: source name -> the two shapes (an error).
        layouts: how many kernels each layout transform converted.
        reversed_inputs: target keys whose input channels were reversed (BGR -> RGB).
    """

    family: str
    consumed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unmatched: dict[str, str] = field(default_factory=dict)
    unfilled: list[str] = field(default_factory=list)
    defaulted: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, str] = field(default_factory=dict)
    layouts: Counter = field(default_factory=Counter)
    reversed_inputs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unmatched or self.unfilled or self.mismatched)

    @property
    def num_problems(self) -> int:
        return len(self.unmatched) + len(self.unfilled) + len(self.mismatched)

    def problems(self) -> str:
        """The errors, names listed (``_LISTED`` per kind)."""
        parts = []
        if self.unmatched:
            parts.append(f"  {len(self.unmatched)} source variables with no target:")
            parts.append(_listing(self.unmatched))
        if self.mismatched:
            parts.append(f"  {len(self.mismatched)} shape mismatches:")
            parts.append(_listing(self.mismatched))
        if self.unfilled:
            parts.append(f"  {len(self.unfilled)} target tensors not filled:")
            parts.append(_listing(self.unfilled))
        return "\n".join(parts)

    def summary(self) -> str:
        """A few lines: counts of each outcome, reasons of the skipped variables, problems."""
        layouts = ", ".join(f"{k}: {v}" for k, v in sorted(self.layouts.items()))
        lines = [
            f"{self.family}: {len(self.consumed)} TF variables converted ({layouts})",
        ]
        if self.reversed_inputs:
            lines.append(
                f"  input channels reversed (BGR -> RGB): {', '.join(self.reversed_inputs)}"
            )
        reasons = Counter(self.skipped.values())
        for reason, count in reasons.most_common():
            example = next(k for k, v in self.skipped.items() if v == reason)
            lines.append(f"  skipped {count} ({reason}), e.g. {example}")
        if self.defaulted:
            reasons = Counter(self.defaulted.values())
            lines += [f"  kept default: {n} target tensors ({r})" for r, n in reasons.items()]
        lines.append(
            f"  unmatched: {len(self.unmatched)}, unfilled: {len(self.unfilled)}, "
            f"shape mismatches: {len(self.mismatched)}"
        )
        if not self.ok:
            lines.append(self.problems())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (it is saved in the checkpoint's ``extra``)."""
        return {
            "family": self.family,
            "consumed": dict(self.consumed),
            "skipped": dict(self.skipped),
            "unmatched": dict(self.unmatched),
            "unfilled": list(self.unfilled),
            "defaulted": dict(self.defaulted),
            "mismatched": dict(self.mismatched),
            "layouts": dict(self.layouts),
            "reversed_inputs": list(self.reversed_inputs),
        }


def _owner_types(model: nn.Module) -> dict[str, type]:
    """``state_dict`` key -> type of the module holding it."""
    owners = {}
    for prefix, module in model.named_modules():
        for name in (*module._parameters, *module._buffers):
            owners[f"{prefix}.{name}" if prefix else name] = type(module)
    return owners


def _to_torch_layout(
    array: np.ndarray, leaf: str, owner: type | None, target_shape: tuple[int, ...]
) -> tuple[np.ndarray, str]:
    """Source array in the receiving tensor's layout, and the name of the transform."""
    if leaf != "kernel":
        return array, "identity"
    for module_type, (label, transform) in KERNEL_LAYOUTS.items():
        if owner is not None and issubclass(owner, module_type):
            out = transform(array, target_shape)
            if label == "HWIO->OIHW" and array.shape[:2] == (1, 3) and out.shape[2:] == (3, 3):
                label = "HWIO(1x3)->OIHW(3x3)"
            return out, label
    raise ConversionError(f"no kernel layout for a {owner} module (known: {list(KERNEL_LAYOUTS)})")


def transfer_weights(
    weights: WeightSource, table: NameTable, model: nn.Module, *, load: bool = True
) -> ConversionReport:
    """Map every variable of ``weights`` with ``table`` onto ``model`` and (``load``) copy it.

    With ``load=False`` only names and shapes are checked (``model`` may live on the meta
    device and ``weights`` may be shape-only): the dry run that selects a mask head.
    Does not raise on problems; they are in the report.
    """
    report = ConversionReport(table.family)
    target = model.state_dict()
    owners = _owner_types(model)
    filled: set[str] = set()
    for name in sorted(weights.shapes):
        mapped = table.map(name)
        if mapped.skipped is not None:
            report.skipped[name] = mapped.skipped
            continue
        if mapped.target is None or mapped.target not in target:
            report.unmatched[name] = mapped.problem or f"-> {mapped.target}, not in the model"
            continue
        key = mapped.target
        if key in filled:
            other = next(k for k, v in report.consumed.items() if v == key)
            report.unmatched[name] = f"-> {key}, already filled by {other}"
            continue
        leaf = name.rpartition("/")[2]
        array, label = _to_torch_layout(
            weights.read(name) if load else _shape_only(weights, name),
            leaf,
            owners.get(key),
            tuple(target[key].shape),
        )
        if key in table.input_channel_reversals:
            array = reverse_input_channels(array)
            report.reversed_inputs.append(key)
        if tuple(array.shape) != tuple(target[key].shape):
            report.mismatched[name] = (
                f"-> {key}: TF {weights.shapes[name]} ({label}: {tuple(array.shape)}) vs "
                f"PyTorch {tuple(target[key].shape)}"
            )
            continue
        if load:
            value = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            with torch.no_grad():
                target[key].copy_(value.to(target[key].dtype))
        report.consumed[name] = key
        report.layouts[label] += 1
        filled.add(key)
    for key in target:
        if key in filled:
            continue
        if key.endswith("num_batches_tracked"):
            report.defaulted[key] = "BatchNorm update counter, not a TF weight"
        else:
            report.unfilled.append(key)
    return report


def _shape_only(weights: WeightSource, name: str) -> np.ndarray:
    return np.broadcast_to(np.zeros((), np.float32), weights.shapes[name])
