"""Experiment configuration: the schema (``schema``: nested dataclasses, ``key=value``
overrides, JSON round trip) and the named presets (``presets``).

A leaf of the package: it imports nothing of deepmac, so every layer (models included) may read
a config without an import pointing upwards.
"""

from deepmac.config.schema import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    ModelConfig,
    RCNNConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    flatten_config,
    load_config,
)

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ExperimentConfig",
    "ModelConfig",
    "RCNNConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "flatten_config",
    "load_config",
]
