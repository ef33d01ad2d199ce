"""Read TensorFlow 2 weights (object-based checkpoints and SavedModels) as named numpy arrays.

TensorFlow is optional (``pip install tensorflow-cpu``, or ``tensorflow``), imported only when a
file is read; everything else in ``deepmac.convert`` works on the ``WeightSource`` interface
below, so it is testable without TensorFlow.

Names. A TF2 checkpoint stores each variable under the object-graph path of the attribute that
first reached it, e.g. ``model/_feature_extractor/_network/downsample_input/conv_block/conv/
kernel/.ATTRIBUTES/VARIABLE_VALUE`` (a ``/`` inside one name is escaped as ``.S`` and ``.`` as
``..``). A SavedModel stores the same variables, but Keras also tracks them in lists such as
``variables/17``, and the saved key can be that list path. We therefore name every variable by its
*canonical* path: the cheapest path through the object graph stored with the weights, where
attribute edges cost 1, Keras' ordinal layer edges (``layer_with_weights-N`` 10, ``layer-N``
100) more, and the generic lists (``variables``, ``keras_api``, ...) are a last resort. For a
training or exported checkpoint the canonical path is the saved key itself; for a SavedModel it
is the same path under the exporting module's root (``_model/`` instead of ``model/``).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "TF_INSTALL_HINT",
    "InMemoryWeights",
    "TFWeights",
    "TensorFlowNotInstalled",
    "WeightSource",
    "canonical_variable_names",
    "import_tensorflow",
    "read_tf_weights",
    "resolve_source",
]

TF_INSTALL_HINT = "pip install tensorflow-cpu   (or: pip install tensorflow)"
VARIABLE_ATTRIBUTE = "VARIABLE_VALUE"
ATTRIBUTES_MARKER = "/.ATTRIBUTES/"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

# Edge cost by local name (first match wins; anything else costs 1). See the module docstring.
_EDGE_COSTS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"layer_with_weights-\d+"), 10),
    (re.compile(r"layer-\d+"), 100),
    (
        re.compile(
            r"variables|trainable_variables|non_trainable_variables|keras_api|"
            r"_self_tracked_trackables|submodules|signatures|layer_metrics|"
            r"layer_regularization_losses"
        ),
        10_000,
    ),
)


class TensorFlowNotInstalled(ImportError):
    """Reading a TF checkpoint needs TensorFlow, which is not importable here."""


def import_tensorflow() -> Any:
    """``import tensorflow`` or raise ``TensorFlowNotInstalled`` with the install command."""
    try:
        import tensorflow as tf  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError as err:
        raise TensorFlowNotInstalled(
            f"reading TensorFlow weights needs TensorFlow, which is not importable here "
            f"({type(err).__name__}: {err}). Install it beside deepmac: {TF_INSTALL_HINT}. "
            f"Only the conversion needs it; the converted .pt file loads without TensorFlow."
        ) from err
    return tf


class WeightSource(Protocol):
    """What the converter reads: variable shapes by canonical name, and values on demand."""

    shapes: dict[str, tuple[int, ...]]

    def read(self, name: str) -> np.ndarray: ...


@dataclass
class InMemoryWeights:
    """A ``WeightSource`` over a dict of arrays (tests, and shape-only dry runs where the values
    are zero-stride ``np.broadcast_to`` arrays)."""

    arrays: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.shapes = {name: tuple(a.shape) for name, a in self.arrays.items()}

    def read(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @classmethod
    def from_shapes(cls, shapes: dict[str, Sequence[int]]) -> InMemoryWeights:
        """Arrays of the given shapes that take no memory (for mapping checks)."""
        zero = np.zeros((), dtype=np.float32)
        return cls({name: np.broadcast_to(zero, tuple(s)) for name, s in shapes.items()})


@dataclass
class TFWeights:
    """Variables of one TF checkpoint or SavedModel.

    Attributes:
        source: the path the user gave.
        kind: ``"checkpoint"`` or ``"saved_model"``.
        prefix: the checkpoint prefix actually read (``.../ckpt-0``, ``.../variables/variables``).
        shapes: canonical variable name -> shape (see the module docstring).
        keys: canonical name -> raw checkpoint key (for messages).
        non_variables: raw keys of saved values that are not variables (object graph, Keras
            config JSON, ...), with the reason they are not converted.
    """

    source: str
    kind: str
    prefix: str
    shapes: dict[str, tuple[int, ...]]
    keys: dict[str, str]
    non_variables: dict[str, str]
    _reader: Any = field(repr=False)

    def read(self, name: str) -> np.ndarray:
        """The value of a variable, by canonical name, as a numpy array."""
        return np.asarray(self._reader.get_tensor(self.keys[name]))


def resolve_source(src: str | Path) -> tuple[str, str]:
    """``(kind, checkpoint prefix)`` for a user path.

    Accepted: a SavedModel directory (holds ``saved_model.pb``), a checkpoint directory (holds a
    ``checkpoint`` index file; its latest checkpoint is read), a checkpoint prefix
    (``.../ckpt-0``, with ``ckpt-0.index`` beside it), or an exported-model directory holding
    ``checkpoint/`` or ``saved_model/`` (the layout of the TF2 detection model zoo tarballs; the
    checkpoint is preferred).

    Raises:
        FileNotFoundError: nothing readable at ``src``, with what was looked for.
    """
    path = Path(src)
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model", str(path / "variables" / "variables")
        if (path / "checkpoint").is_file():
            return "checkpoint", _latest_checkpoint(path)
        for sub in ("checkpoint", "saved_model"):
            if (path / sub).is_dir():
                return resolve_source(path / sub)
        raise FileNotFoundError(
            f"{path} holds neither saved_model.pb, a 'checkpoint' index file, nor checkpoint/ "
            f"or saved_model/ folders; pass a SavedModel folder, a checkpoint folder or a "
            f"checkpoint prefix like .../ckpt-0"
        )
    if Path(f"{path}.index").is_file():
        return "checkpoint", str(path)
    raise FileNotFoundError(
        f"{path} is not a directory and {path}.index does not exist; pass a SavedModel folder, "
        f"a checkpoint folder or a checkpoint prefix like .../ckpt-0"
    )


def _latest_checkpoint(folder: Path) -> str:
    """The prefix named by ``model_checkpoint_path`` in a TF ``checkpoint`` index file (a text
    proto), resolved relative to the folder. Read without TensorFlow."""
    text = (folder / "checkpoint").read_text()
    match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', text, flags=re.MULTILINE)
    if match is None:
        raise FileNotFoundError(f"{folder / 'checkpoint'} names no model_checkpoint_path")
    prefix = Path(match.group(1))
    prefix = prefix if prefix.is_absolute() else folder / prefix
    if not Path(f"{prefix}.index").is_file():
        # The index may hold an absolute path of the machine that wrote it.
        prefix = folder / prefix.name
    if not Path(f"{prefix}.index").is_file():
        raise FileNotFoundError(f"{folder / 'checkpoint'} names {match.group(1)}, not found")
    return str(prefix)


def _escape(local_name: str) -> str:
    # TF's checkpoint-key escaping of one object-graph name.
    return local_name.replace(".", "..").replace("/", ".S")


def _edge_cost(local_name: str) -> int:
    for pattern, cost in _EDGE_COSTS:
        if pattern.fullmatch(local_name):
            return cost
    return 1


def canonical_variable_names(
    nodes: Sequence[tuple[Sequence[tuple[int, str]], Sequence[tuple[str, str]]]],
) -> dict[str, str]:
    """Raw checkpoint key -> canonical path, for every variable reachable from node 0.

    Args:
        nodes: the object graph, node ``i`` as ``(children, attributes)`` with children
            ``(node_id, local_name)`` and attributes ``(name, checkpoint_key)``.

    Returns:
        ``{checkpoint_key: "a/b/kernel"}`` for attributes named ``VARIABLE_VALUE``; the path is
        the cheapest by ``_EDGE_COSTS``, ties broken by the lexicographically smallest path.
    """
    best: dict[int, tuple[int, tuple[str, ...]]] = {0: (0, ())}
    heap: list[tuple[int, tuple[str, ...], int]] = [(0, (), 0)]
    while heap:
        cost, path, node = heapq.heappop(heap)
        if best.get(node) != (cost, path):
            continue  # a stale entry: a cheaper path was found after it was queued
        for child, local_name in nodes[node][0]:
            candidate = (cost + _edge_cost(local_name), (*path, _escape(local_name)))
            if child not in best or candidate < best[child]:
                best[child] = candidate
                heapq.heappush(heap, (*candidate, child))
    names = {}
    for node, (_, path) in best.items():
        for attribute, key in nodes[node][1]:
            if attribute == VARIABLE_ATTRIBUTE:
                names[key] = "/".join(path)
    return names


def read_tf_weights(src: str | Path) -> TFWeights:
    """Open a TF2 checkpoint or SavedModel (see ``resolve_source``) and name its variables.

    Variables the object graph does not reach (e.g. optimizer slots) keep their raw key without
    the ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix.

    Raises:
        TensorFlowNotInstalled: TensorFlow is not importable.
        FileNotFoundError: see ``resolve_source``.
    """
    kind, prefix = resolve_source(src)
    tf = import_tensorflow()
    reader = tf.train.load_checkpoint(prefix)
    raw_shapes = reader.get_variable_to_shape_map()
    canonical: dict[str, str] = {}
    if OBJECT_GRAPH_KEY in raw_shapes:
        from tensorflow.core.protobuf import trackable_object_graph_pb2  # noqa: PLC0415

        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
        nodes = [
            (
                [(c.node_id, c.local_name) for c in n.children],
                [(a.name, a.checkpoint_key) for a in n.attributes],
            )
            for n in graph.nodes
        ]
        canonical = canonical_variable_names(nodes)
    shapes: dict[str, tuple[int, ...]] = {}
    keys: dict[str, str] = {}
    non_variables: dict[str, str] = {}
    for key, shape in raw_shapes.items():
        if key == OBJECT_GRAPH_KEY:
            continue  # the graph itself, read above
        head, marker, attribute = key.partition(ATTRIBUTES_MARKER)
        if marker and attribute != VARIABLE_ATTRIBUTE:
            non_variables[key] = f"saved attribute {attribute!r}, not a variable"
            continue
        name = canonical.get(key, head)
        if name in keys:
            raise ValueError(
                f"two variables of {src} map to the name {name!r}: {keys[name]}, {key}"
            )
        shapes[name] = tuple(int(d) for d in shape)
        keys[name] = key
    return TFWeights(str(src), kind, prefix, shapes, keys, non_variables, reader)
