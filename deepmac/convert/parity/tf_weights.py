"""Random official TF models saved as checkpoints and converted with the public converter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: ``gamma`` range of the last BN of each random residual branch (``scale_residual_branches``).
RESIDUAL_GAMMA = (0.1, 0.3)

# Random values for everything Keras initialises to a constant (kernels keep their random init).
RANDOM_DRAWS: dict[str, Callable[[np.random.Generator, tuple], np.ndarray]] = {
    "bias": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "gamma": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
    "beta": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "moving_mean": lambda rng, shape: rng.normal(0.0, 0.1, shape),
    "moving_variance": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
}


def fan_in(layer: Any) -> int:
    """Inputs summed into one output value of a Keras layer with a ``kernel``."""
    shape = tuple(layer.kernel.shape)
    if "Transpose" in type(layer).__name__:
        # (k, k, out, in) with stride k: each output pixel reads one kernel tap per input channel.
        return shape[-1]
    return int(np.prod(shape[:-1]))  # Conv2D (kh, kw, in, out), Dense (in, out)


def randomize(root: Any, seed: int) -> None:
    """Random weights for every layer under ``root`` (a Keras layer or ``tf.Module``).

    Kernels: LeCun normal, ``N(0, 1 / fan_in)``, which keeps every activation of order 1, so
    that the bounds compare float32 rounding at the scale of a trained model. (Keras' own
    initialisers would do for most heads, but Model Garden's ``VarianceScaling(fan_out)`` on the
    1-channel logit layer gives logits around 50 and a rounding floor near the bound.) Biases,
    BN scales/offsets and moving statistics: ``RANDOM_DRAWS``, so a mis-mapped one shows up.
    """
    rng = np.random.default_rng(seed)
    for layer in [root, *root.submodules]:
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and hasattr(kernel, "assign"):
            std = 1.0 / np.sqrt(fan_in(layer))
            kernel.assign(rng.normal(0.0, std, tuple(kernel.shape)).astype(np.float32))
    for var in root.variables:
        leaf = var.name.split("/")[-1].split(":")[0]
        if leaf in RANDOM_DRAWS:
            var.assign(RANDOM_DRAWS[leaf](rng, tuple(var.shape)).astype(np.float32))


def scale_residual_branches(root: Any, seed: int) -> int:
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


def float64_spread(model: torch.nn.Module, x: torch.Tensor, ours: np.ndarray) -> float:
    """``max |float32 - float64|`` of our converted ``model`` on ``x``: the float32 rounding
    floor of the comparison (``ours`` is the float32 output). ``model`` is restored to float32."""
    with torch.no_grad():
        exact = model.double()(x.double()).numpy()
    model.float()
    return float(np.abs(exact.reshape(ours.shape) - ours).max())


def save_checkpoint(folder: Path, **objects: Any) -> Path:
    """``tf.train.Checkpoint(**objects)`` saved under ``folder``; returns the folder."""
    import tensorflow as tf

    tf.train.Checkpoint(**objects).save(str(folder / "ckpt"))
    return folder


def holder(**attributes: Any) -> Any:
    """A ``tf.Module`` with the given attributes: places a head where the real model has it
    (``model/_mask_net/`` in Deep-MAC, ``model/mask_head/`` in Model Garden)."""
    import tensorflow as tf

    module = tf.Module()
    for name, value in attributes.items():
        setattr(module, name, value)
    return module


def nchw(array: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(array), (0, 3, 1, 2))))


#: ``manifest`` arguments: check name -> ``{"model": spec, "options": {...}, "shapes":
#: {TF variable: shape}}``, the variable names of the official models, for TF-free tests.
Manifest = dict[str, dict[str, Any]]


def convert(
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
