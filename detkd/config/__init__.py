"""Typed YAML configs: schema (dataclasses) and loading (inheritance, overrides, validation)."""

from detkd.config.load import config_hash, dump_config, load_config
from detkd.config.schema import (
    DATASET_TYPES,
    BaseDatasetConfig,
    CocoDatasetConfig,
    Config,
    DataConfig,
    DatasetConfig,
    DemoDatasetConfig,
    DistillConfig,
    ModelConfig,
    TeacherConfig,
    TrainConfig,
    VOCDatasetConfig,
    YoloDatasetConfig,
)

__all__ = [
    "DATASET_TYPES", "BaseDatasetConfig", "CocoDatasetConfig", "Config", "DataConfig", "DatasetConfig",
    "DemoDatasetConfig", "DistillConfig", "ModelConfig", "TeacherConfig", "TrainConfig", "VOCDatasetConfig",
    "YoloDatasetConfig", "config_hash", "dump_config", "load_config",
]
