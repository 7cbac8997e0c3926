"""Typed YAML configs: schema (dataclasses) and loading (inheritance, overrides, validation).

The whole detection config, with the distillation methods' sections, is loaded by
:func:`detkd.recipe.load_config` (this layer sits below the methods and gets their sections
passed in)."""

from detkd.config.load import build_dataclass, config_hash, dump_config, load_model_config
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
    "YoloDatasetConfig", "build_dataclass", "config_hash", "dump_config", "load_model_config",
]
