"""Typed YAML configs: schema (dataclasses) and loading (inheritance, overrides, validation)."""

from detkd.config.load import config_hash, dump_config, load_config
from detkd.config.schema import (
    DATASET_TYPES,
    BaseDatasetConfig,
    Config,
    DataConfig,
    DistillConfig,
    ModelConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "DATASET_TYPES", "BaseDatasetConfig", "Config", "DataConfig", "DistillConfig", "ModelConfig", "TeacherConfig",
    "TrainConfig", "config_hash", "dump_config", "load_config",
]
