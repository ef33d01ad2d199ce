"""Where the official code is and how TensorFlow must be set up to run it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[3]


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


def deepmac_meta_arch_namespace(models_dir: Path) -> dict[str, Any]:
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
