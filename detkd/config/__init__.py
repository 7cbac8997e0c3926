"""Typed YAML configs: schema (dataclasses) and loading (inheritance, overrides, validation).

The whole detection config, with the distillation methods' sections, is loaded by
:func:`detkd.recipe.load_config` (this layer sits below the methods and gets their sections
passed in)."""

from detkd.config.build import build_dataclass
from detkd.config.dump import config_hash, dump_config
from detkd.config.schema import (
    BaseDatasetConfig,
    Config,
    DataConfig,
    DistillConfig,
    ModelConfig,
    TeacherConfig,
    TrainConfig,
)

__all__ = [
    "BaseDatasetConfig", "Config", "DataConfig", "DistillConfig", "ModelConfig", "TeacherConfig",
    "TrainConfig", "build_dataclass", "config_hash", "dump_config",
]
