"""Loading a detection config: the generic machinery of :mod:`detkd.config.tree` and
:mod:`detkd.config.build` given the registries it builds the open sections from.

``distill.<name>`` is the config dataclass of ``METHODS[name]`` (detkd/distill/methods/), so a
new method's options, defaults, ranges and ``--opts distill.<name>.<key>=...`` need nothing
here. The registries are read when a config is loaded (a method added to ``METHODS`` at run
time, e.g. by a test, is a section from then on).

Configs of earlier versions: before one section per method, Chen et al.'s options were flat ``distill.*``
keys, on unless ``distill.chen: false``. A ``config.yaml`` such a version saved (its
``distill`` section holds every one of those keys and the switch) is read as the same run,
``distill.chen: {...}`` (or no ``chen`` section for ``chen: false``), with one warning line, so
``eval``, ``predict``, ``report`` and ``--resume`` keep working with old runs. In a config a
person writes, the old keys are a one-line error saying where each one moved.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import yaml

from detkd.config.build import build_dataclass
from detkd.config.tree import key_source, load_tree
from detkd.config.schema import ARCH_FAMILIES, Config, ModelConfig
from detkd.data.build import dataset_types
from detkd.distill.methods import METHODS
from detkd.errors import DetkdError
from detkd.recipe.model import check_model_keys, resolve_teacher_config

__all__ = ["registries", "config_from_dict", "load_config", "read_saved_config", "check_config"]

log = logging.getLogger(__name__)

# Before one section per method, the options of this method were flat distill.* keys (on unless `chen: false`).
FLAT_METHOD = "chen"


def registries() -> dict[str, dict[str, type]]:
    """What the loader builds the open sections from: ``distill.<name>`` from ``METHODS``,
    ``data.<split>`` (picked by its ``type``) from ``DATASETS``."""
    return {"methods": {name: method.config for name, method in METHODS.items()}, "datasets": dataset_types()}


def _flat_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(METHODS[FLAT_METHOD].config)]


def migrate_flat_distill(tree: dict, origins: dict, source: str) -> dict:
    """``tree`` with an earlier version's saved flat Chen et al. keys moved into
    ``distill.chen`` (one warning line); flat keys in a hand-written config: one-line error."""
    d = tree.get("distill")
    if not isinstance(d, dict):
        return tree
    keys = _flat_keys()
    flat = [k for k in d if k in keys]
    switch = d.get(FLAT_METHOD)
    old_switch = isinstance(switch, bool)
    if not flat and not old_switch:
        return tree
    if old_switch and set(keys) <= set(d):  # dump_config of an earlier version: every key and the switch
        new = {k: v for k, v in d.items() if k not in keys and k != FLAT_METHOD}
        if switch:
            new[FLAT_METHOD] = {k: d[k] for k in keys}
        log.warning("%s: a config.yaml of an earlier detkd (Chen et al.'s options as flat distill keys, chen: %s); "
                    "read as %s", source, str(switch).lower(),
                    f"distill.{FLAT_METHOD}: {{...}}" if switch else f"no distill.{FLAT_METHOD} section")
        return {**tree, "distill": new}
    where = key_source(f"distill.{(flat or [FLAT_METHOD])[0]}", origins, source)
    moved = [f"'distill.{k}' -> 'distill.{FLAT_METHOD}.{k}'" for k in flat]
    if old_switch:
        moved.append(f"'distill.{FLAT_METHOD}: {str(switch).lower()}' -> "
                     + (f"'distill.{FLAT_METHOD}: {{}}'" if switch else f"leave 'distill.{FLAT_METHOD}' out"))
    raise DetkdError(f"{where}: Chen et al. is a section now (distill: {{{FLAT_METHOD}: {{...}}, pkd: {{...}}}}; "
                     f"a method is on when its section is there): {', '.join(moved)}")


def fill_family_defaults(tree: dict) -> dict:
    """``tree`` with each method section's options that depend on the student's detector family
    (``METHODS[name].family_defaults``, e.g. PKD's weight 10 for a RetinaNet student) filled in
    where the section leaves them out, so the run's saved config.yaml shows the values it used."""
    d, model = tree.get("distill"), tree.get("model")
    if not isinstance(d, dict):
        return tree
    arch = model.get("arch", ModelConfig.arch) if isinstance(model, dict) else ModelConfig.arch
    family = ARCH_FAMILIES.get(arch) if isinstance(arch, str) else None
    filled = dict(d)
    for name, section in d.items():
        defaults = METHODS[name].family_defaults.get(family) if name in METHODS else None
        if defaults and isinstance(section, dict):
            filled[name] = {**defaults, **section}
    return {**tree, "distill": filled}


def config_from_dict(tree: dict, origins: dict | None = None, source: str = "<dict>") -> Config:
    """A checked :class:`Config` from a merged YAML tree (``origins``: dotted key -> file)."""
    origins = origins or {}
    tree = fill_family_defaults(migrate_flat_distill(tree, origins, source))
    cfg = build_dataclass(Config, tree, source, origins, registries())
    check_config(cfg, source, origins)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, merge, override and validate a config file."""
    tree, origins = load_tree(path, overrides, registries())
    tree = resolve_teacher_config(tree, origins, str(Path(path)))
    return config_from_dict(tree, origins, str(Path(path)))


def read_saved_config(text: str, source: str) -> Config:
    """The config a run saved (``config.yaml``, a checkpoint's ``config``), read by this version."""
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DetkdError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise DetkdError(f"{source}: the saved config is not a mapping")
    return config_from_dict(tree, source=source)


def check_config(cfg: Config, source: str, origins: dict | None = None) -> None:
    """Checks across sections (each field's own range is declared on it, each section's rules
    across its fields on its dataclass); ``origins``: the file that set each dotted key."""
    check_model_keys(cfg.model, origins or {}, source)
    if cfg.teacher is not None:
        check_model_keys(cfg.teacher.model, origins or {}, source, "teacher.model")
    if not cfg.output_dir:
        raise DetkdError(f"{source}: 'output_dir' must not be empty")
    if (cfg.teacher is None) != (cfg.distill is None):
        raise DetkdError(f"{source}: a distillation run needs both a 'teacher' and a 'distill' section")
    if cfg.distill is not None:
        check_teacher_source(cfg, source)
    if cfg.data.unlabeled is not None and cfg.distill is None:
        raise DetkdError(f"{source}: data.unlabeled needs a teacher (teacher and distill sections): its images have "
                         "no labels, the teacher's detections are their targets")
    if cfg.distill is not None:  # pairs of detector families a method cannot distil
        families = (ARCH_FAMILIES[cfg.model.arch],
                    None if cfg.teacher.detections else ARCH_FAMILIES[cfg.teacher.model.arch])
        for name, section in cfg.distill.methods.items():
            if name in METHODS and section is not None:
                try:
                    METHODS[name].check_families(section, *families)
                except DetkdError as exc:
                    raise DetkdError(f"{source}: {exc}") from None


def check_teacher_source(cfg: Config, source: str) -> None:
    """A teacher is a model (``teacher.checkpoint``) or a detections file (``teacher.detections``),
    not both; a detections file feeds only the methods that read detections (``offline``)."""
    teacher = cfg.teacher
    if teacher.detections and teacher.checkpoint:
        raise DetkdError(f"{source}: teacher.detections and teacher.checkpoint are exclusive: a teacher is a model "
                         "or a file of its detections")
    if teacher.detections:
        need_model = [name for name, section in cfg.distill.methods.items()
                      if section is not None and name in METHODS and not METHODS[name].offline]
        if need_model:
            raise DetkdError(f"{source}: distill.{need_model[0]} needs the teacher model (teacher.config and "
                             f"teacher.checkpoint); teacher.detections {teacher.detections} feeds only "
                             f"{', '.join('distill.' + n for n, m in METHODS.items() if m.offline)}")
    elif not teacher.checkpoint:
        raise DetkdError(f"{source}: 'teacher.checkpoint' is required for a distillation run "
                         "(or teacher.detections, a file of the teacher's detections)")
