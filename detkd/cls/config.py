"""Loading a classification config (``tools/train_cls.py``): the schema of
:mod:`detkd.cls.schema` read by the generic machinery of :mod:`detkd.config` (the same tree
loader and builder as detection), given the methods' sections from
:data:`detkd.cls.methods.METHODS`, as :mod:`detkd.recipe` gives detection's. So a method's
options, defaults, ranges, ``--opts method.<name>.<key>=...`` and its name as a valid
``method.name`` need nothing here; the checks across sections (teachers, peers,
semi-supervised data) read what each method class declares.

Only the named method's section may be set, and it holds that method's defaults where not
given (the defaults and their sources are in the methods' files). The flat keys of before
(``method.kd_weight`` ...) are refused with the key they moved to.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from detkd.cls.methods import METHODS
from detkd.cls.schema import ClsConfig, ClsDataConfig, MethodConfig, NetConfig
from detkd.config.build import build_dataclass
from detkd.config.tree import key_source, load_tree
from detkd.errors import DetkdError

__all__ = ["ClsConfig", "ClsDataConfig", "MOVED_METHOD_KEYS", "MethodConfig", "NetConfig", "check_cls_config",
           "cls_config_from_dict", "load_cls_config", "registries"]


def registries() -> dict[str, dict[str, type]]:
    """What the loader builds ``method.<name>`` from (and checks ``method.name`` against): ``METHODS``."""
    return {"cls_methods": {name: method.config for name, method in METHODS.items()}}


def _has_options(name: str) -> bool:
    return name in METHODS and bool(dataclasses.fields(METHODS[name].config))


def _names(names: list[str]) -> str:
    """``a, b and c``."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


# The flat keys before one section per method: old key -> (methods that read it, new field).
_LOGIT_KD = ("kd", "aver", "ebkd", "aekd", "camkd")
MOVED_METHOD_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "temperature": (_LOGIT_KD, "temperature"),
    "kd_weight": (_LOGIT_KD, "weight"),
    "fitnet_weight": (("fitnet",), "weight"),
    "fitnet_stage": (("fitnet",), "stage"),
    "fitnet_teacher_stage": (("fitnet",), "teacher_stage"),
    "at_weight": (("at",), "weight"),
    "at_stages": (("at",), "stages"),
    "sp_weight": (("sp",), "weight"),
    "sp_stage": (("sp",), "stage"),
    "aekd_c_tol": (("aekd",), "c_tol"),
    "camkd_inter_weight": (("camkd",), "inter_weight"),
    "camkd_inter_start_epoch": (("camkd",), "inter_start_epoch"),
    "camkd_detach_inter_weights": (("camkd",), "detach_inter_weights"),
    "fitnet_mkd_weight": (("fitnet_mkd",), "weight"),
    "dml_update": (("dml", "dml_e"), "update"),
    "ffl_temperature": (("ffl",), "temperature"),
    "ffl_rampup_epochs": (("ffl",), "rampup_epochs"),
    "ffl_eps": (("ffl",), "eps"),
    "ffl_align_channels": (("ffl",), "align_channels"),
    "ffl_fusion_lr": (("ffl",), "fusion_lr"),
    "scd_beta": (("scd",), "beta"),
    "scd_target": (("scd",), "target"),
}
SECTIONS_SINCE = "2026-12-02"


def moved_key_message(old: str, name: Any) -> str:
    """Where flat key ``method.<old>`` went, for a run of method ``name``."""
    methods, new = MOVED_METHOD_KEYS[old]
    if name in methods or len(methods) == 1:
        target = f"'method.{name if name in methods else methods[0]}.{new}'"
    else:
        target = f"'method.<name>.{new}' (<name>: {', '.join(methods)})"
    return (f"'method.{old}' moved: use {target} (one section per method since {SECTIONS_SINCE}; "
            f"see docs/classification.md)")


def _check_moved_keys(tree: dict, origins: dict, source: str) -> None:
    """The old flat method keys, before the schema would call them unknown."""
    method = tree.get("method")
    if not isinstance(method, dict):
        return
    for key in method:
        if key in MOVED_METHOD_KEYS:
            where = key_source(f"method.{key}", origins, source)
            raise DetkdError(f"{where}: {moved_key_message(key, method.get('name', 'baseline'))}")


def _fill_named_section(tree: dict) -> dict:
    """``tree`` with the named method's section added (``{}``: its defaults) where it is
    absent or null; a method without options gets none."""
    method = tree.get("method")
    if method is not None and not isinstance(method, dict):
        return tree  # the builder reports it
    name = (method or {}).get("name", MethodConfig.name)
    if not isinstance(name, str) or not _has_options(name) or (method or {}).get(name) is not None:
        return tree
    return {**tree, "method": {**(method or {}), name: {}}}


def _check_method_sections(m: MethodConfig, origins: dict, source: str) -> None:
    """Only the named method's section may be set (``null`` is fine)."""
    for key in m.sections:
        if key != m.name:
            path = f"method.{key}"
            # the file that set the section, or one of its keys (--opts method.fitnet.weight=3)
            inner = [origins[k] for k in origins if k.startswith(path + ".") and origins[k]]
            where = origins.get(path) or (inner[-1] if inner else key_source(path, origins, source))
            own = f"its section is 'method.{m.name}'" if _has_options(m.name) else "it has no section"
            raise DetkdError(f"{where}: 'method.{key}' is set but method.name is '{m.name}' ({own}); "
                             f"remove it (or --opts method.{key}=null), or set method.name: {key}")


def check_cls_config(cfg: ClsConfig, source: str, origins: dict | None = None) -> None:
    """Checks across fields and sections (each field's own range is declared on it;
    ``origins``: which file set each dotted key, for the messages)."""
    name = cfg.method.name
    if cfg.data.labelled_fraction < 1.0 and not METHODS[name].semi_supervised:
        semi = [n for n, m in METHODS.items() if m.semi_supervised]
        raise DetkdError(f"{source}: 'data.labelled_fraction' < 1 (semi-supervised) is supported by the "
                         f"methods {_names(semi)}, not '{name}'")
    _check_method_sections(cfg.method, origins or {}, source)
    if not cfg.output_dir:
        raise DetkdError(f"{source}: 'output_dir' must not be empty")
    _check_networks(cfg, source)


def _check_networks(cfg: ClsConfig, source: str) -> None:
    """The teachers and peers the method needs (its class's ``teachers_needed``, ``peer_prefix``)."""
    name, method, k = cfg.method.name, METHODS[cfg.method.name], len(cfg.teachers)
    if method.teachers_needed == "one" and k != 1:
        several = "/".join(n for n, m in METHODS.items() if m.teachers_needed == "several")
        raise DetkdError(f"{source}: method '{name}' needs exactly 1 entry in 'teachers', got {k}"
                         + (f" (use {several} for several)" if k > 1 else ""))
    if method.teachers_needed == "several" and k < 1:
        raise DetkdError(f"{source}: method '{name}' needs at least 1 entry in 'teachers', got 0")
    if method.teachers_needed == "none" and k:
        raise DetkdError(f"{source}: method '{name}' uses no teachers, but 'teachers' has {k} "
                         f"(set teachers: [] or pick a distillation method)")
    for i, teacher in enumerate(cfg.teachers):
        if not teacher.checkpoint:
            raise DetkdError(f"{source}: 'teachers[{i}].checkpoint' is required (a teacher is loaded, not trained)")
    if method.peer_prefix is not None:
        n = len(cfg.peers) or cfg.num_peers
        if n < 2:
            raise DetkdError(f"{source}: method '{name}' needs at least 2 networks ('peers' or 'num_peers'), got {n}")
    elif cfg.peers:
        online = [n for n, m in METHODS.items() if m.peer_prefix is not None]
        raise DetkdError(f"{source}: 'peers' is used by {_names(online)} only, not by '{name}'")


def cls_config_from_dict(tree: dict, source: str = "<dict>", origins: dict | None = None) -> ClsConfig:
    """A checked :class:`ClsConfig` from a merged YAML tree (``origins``: dotted key -> file)."""
    origins = origins or {}
    _check_moved_keys(tree, origins, source)
    cfg = build_dataclass(ClsConfig, _fill_named_section(tree), source, origins, registries())
    check_cls_config(cfg, source, origins)
    return cfg


def load_cls_config(path: str | Path, overrides: list[str] | None = None) -> ClsConfig:
    """Load, merge (``_base_``), override and validate a classification config."""
    tree, origins = load_tree(path, overrides)
    return cls_config_from_dict(tree, str(Path(path)), origins)
