"""The whole detection config of a run: the config layer's sections plus the sections of the
distillation methods (``METHODS``), loaded, migrated and checked (:func:`load_config`)."""

from detkd.recipe.load import config_from_dict, load_config, read_saved_config, registries

__all__ = ["config_from_dict", "load_config", "read_saved_config", "registries"]
