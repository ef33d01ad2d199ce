"""How a name table turns TF variable paths into PyTorch ``state_dict`` keys.

A ``NameTable`` is data: root prefixes to strip, source variables to skip (with the reason),
and *scopes*. A scope owns every variable whose path (after the root) starts with its
``tf_prefix``; it rewrites the rest of the path with its ordered regex ``rules`` and prepends its
``torch_prefix``. The last path segment is the variable's own name and goes through ``LEAVES``
(``kernel -> weight``, ``gamma -> weight``, ``moving_mean -> running_mean``, ...). ``/`` becomes
``.`` at the end. The tables of each model family live in ``heads_names``, ``deepmac_names`` and
``deepmarc_names``; this module has no family-specific knowledge.

Example (Deep-MAC backbone): ``model/_feature_extractor/_network/hourglass_network/1/
inner_block/0/decoder_block/0/norm/gamma`` -> root ``model/`` stripped -> scope
``_feature_extractor/_network/`` -> rules give ``hourglasses/1/inner_block/decoder_block/0/norm/``
+ leaf ``weight`` -> ``backbone.hourglasses.1.inner_block.decoder_block.0.norm.weight``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "COMMON_SKIPS",
    "LEAVES",
    "MappedName",
    "NameTable",
    "Rule",
    "Scope",
    "SkipRule",
    "nested",
]

#: TF variable name -> PyTorch parameter/buffer name (Conv2D/Dense/Conv2DTranspose and Keras BN).
LEAVES: Mapping[str, str] = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}

#: ``(regex, replacement)`` for ``re.sub`` (every occurrence), applied in order.
Rule = tuple[str, str]
#: ``(regex searched in the full source name, reason it is not converted)``.
SkipRule = tuple[str, str]


#: Saved values of any TF2 training checkpoint that are not model weights.
COMMON_SKIPS: tuple[SkipRule, ...] = (
    (r"/\.OPTIMIZER_SLOT/", "optimizer slot variable"),
    (r"^optimizer/", "optimizer state"),
    (r"^save_counter$", "checkpoint save counter"),
    (r"^(step|global_step)$", "training step counter"),
)


@dataclass(frozen=True)
class Scope:
    """Variables under ``tf_prefix`` map under ``torch_prefix`` after ``rules`` (module doc)."""

    tf_prefix: str
    torch_prefix: str
    rules: tuple[Rule, ...] = ()


def nested(scopes: tuple[Scope, ...], tf_prefix: str, torch_prefix: str) -> tuple[Scope, ...]:
    """``scopes`` of a sub-model placed under ``tf_prefix`` / ``torch_prefix`` of a bigger one
    (e.g. a mask head's scopes under ``_mask_net/`` -> ``mask_branch/head/``)."""
    return tuple(
        Scope(tf_prefix + s.tf_prefix, torch_prefix + s.torch_prefix, s.rules) for s in scopes
    )


@dataclass(frozen=True)
class MappedName:
    """Outcome for one source variable: a ``target`` key, or ``skipped`` with a reason, or
    neither (``problem`` says why no target could be named)."""

    source: str
    target: str | None = None
    skipped: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class NameTable:
    """The name mapping of one model family (see the module docstring).

    Attributes:
        family: for messages, e.g. ``"deepmac"``.
        roots: prefixes tried in order; the first one a name starts with is stripped. A name
            under no root is reported as outside the converted model.
        scopes: tried in order; the first whose ``tf_prefix`` matches owns the variable.
        skips: source variables that are deliberately not converted (optimizer state, the
            detector parts of a Deep-MARC checkpoint, ...), matched before the roots.
        input_channel_reversals: target keys whose input channels are reversed after the
            layout transform (BGR-trained first convolutions; see ``layouts``).
    """

    family: str
    roots: tuple[str, ...]
    scopes: tuple[Scope, ...]
    skips: tuple[SkipRule, ...] = ()
    input_channel_reversals: tuple[str, ...] = ()
    _compiled: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def _rules(self, scope: Scope) -> list[tuple[re.Pattern[str], str]]:
        if scope not in self._compiled:
            self._compiled[scope] = [(re.compile(p), r) for p, r in scope.rules]
        return self._compiled[scope]

    def strip_root(self, name: str) -> str | None:
        """``name`` without its root prefix, or None when it is under no root."""
        for root in self.roots:
            if name.startswith(root):
                return name[len(root) :]
        return None

    def map(self, name: str) -> MappedName:
        """Map one source variable name (canonical TF path, see ``tf_checkpoint``)."""
        for pattern, reason in self.skips:
            if re.search(pattern, name):
                return MappedName(name, skipped=reason)
        rel = self.strip_root(name)
        if rel is None:
            roots = ", ".join(repr(r) for r in self.roots)
            return MappedName(name, skipped=f"outside the {self.family} model (roots {roots})")
        scope = next((s for s in self.scopes if rel.startswith(s.tf_prefix)), None)
        if scope is None:
            return MappedName(name, problem=f"no {self.family} scope owns {rel!r}")
        path, _, leaf = rel[len(scope.tf_prefix) :].rpartition("/")
        if leaf not in LEAVES:
            return MappedName(name, problem=f"unknown variable kind {leaf!r}")
        path = f"{path}/" if path else ""
        for pattern, replacement in self._rules(scope):
            path = pattern.sub(replacement, path)
        target = f"{scope.torch_prefix}{path}{LEAVES[leaf]}".replace("/", ".")
        return MappedName(name, target=target)
