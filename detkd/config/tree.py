"""The YAML tree of a config: files with ``_base_`` inheritance, command-line overrides, and
where each key was set.

* ``_base_: path.yaml`` (or a list of paths, relative to the including file) is loaded
  first and the file's own keys are merged into it recursively (mappings merge, every
  other value replaces).
* Overrides ``a.b.c=VALUE`` (or ``a.b.c VALUE`` pairs) are applied last; VALUE is parsed as
  YAML, so ``train.amp=true`` is a bool and ``model.anchor_sizes=[[16],[32]]`` a list.
* ``origins`` maps each dotted key to the file (or ``--opts``) that set it: every error
  about a key names that file (:func:`key_source`).
* Dataset sections (``data.train``, ``data.val``) are flat: their ``type`` picks the
  dataclass from the registry ``datasets``. When a later source (a file including the one
  that set them, or ``--opts``) changes a section's ``type``, the earlier options that the
  new type lacks are dropped, so ``--opts data.train.type=voc data.train.root=DIR`` works
  over a coco config.

The typed dataclasses are built from the tree by :mod:`detkd.config.build`; detection and
classification configs are both read with :func:`load_tree`.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from detkd.config.fields import registry_of
from detkd.config.schema import BaseDatasetConfig, DataConfig
from detkd.errors import DetkdError

__all__ = ["NO_REGISTRIES", "OVERRIDE_SOURCE", "Registries", "apply_overrides", "key_source", "load_tree",
           "load_yaml_tree", "merge_trees", "parse_overrides", "parse_yaml_file"]

OVERRIDE_SOURCE = "--opts"
# name -> {entry name -> section dataclass}: what registry fields (detkd.config.fields) are built from.
Registries = typing.Mapping[str, typing.Mapping[str, type]]
NO_REGISTRIES: Registries = MappingProxyType({})
# Dotted paths of the dataset sections ("data.train", "data.val"): registry "datasets", picked by "type".
DATASET_SECTIONS = tuple(f"data.{f.name}" for f in dataclasses.fields(DataConfig)
                         if registry_of(f) is not None and registry_of(f).name == "datasets")


def parse_yaml_file(path: Path) -> Any:
    """``yaml.safe_load`` of a file; a syntax error is one line naming the file and line."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise DetkdError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DetkdError(f"config file not found: {path}")
    data = parse_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DetkdError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _retyped(section: dict, kind: Any, registries: Registries,
             keep: typing.Callable[[str], bool] = lambda key: False) -> dict:
    """``section`` with its ``type`` changed to ``kind``: the options ``kind`` lacks are
    dropped (but those ``keep`` names, which validation then reports). Without the
    ``datasets`` registry (or for an unknown type, which validation reports) it is unchanged."""
    cls = registries.get("datasets", {}).get(kind) if isinstance(kind, str) else None
    if cls is None or kind == section.get("type", BaseDatasetConfig.type):
        return section
    options = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in section.items() if k in options or keep(k)}



def merge_trees(base: dict, new: dict, origins: dict, source: str, prefix: str = "",
                registries: Registries = NO_REGISTRIES) -> dict:
    """Merge ``new`` into ``base`` recursively, recording which file set each key; a dataset
    section whose ``type`` changes drops the options of the type it had (``registries``)."""
    out = dict(base)
    for key, value in new.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if path in DATASET_SECTIONS and "type" in value:
                out[key] = _retyped(out[key], value["type"], registries)
            out[key] = merge_trees(out[key], value, origins, source, path + ".", registries)
        else:
            out[key] = value
            _record(origins, path, value, source)
    return out


def _record(origins: dict, path: str, value: Any, source: str) -> None:
    origins[path] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _record(origins, f"{path}.{k}", v, source)


def load_yaml_tree(path: str | Path, origins: dict | None = None, _stack: tuple = (),
                   registries: Registries = NO_REGISTRIES) -> dict:
    """Load ``path`` with its ``_base_`` chain merged in. ``origins`` maps dotted keys to
    the file that set them (for error messages)."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise DetkdError(f"circular _base_ chain: {chain}")
    origins = {} if origins is None else origins
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise DetkdError(f"{path}: _base_ must be a path or a list of paths")
    merged: dict = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise DetkdError(f"{path}: _base_ file not found: {base_path}")
        base_origins: dict = {}
        merged = merge_trees(merged, load_yaml_tree(base_path, base_origins, (*_stack, path), registries), origins, "",
                        registries=registries)
        origins.update(base_origins)
    return merge_trees(merged, data, origins, str(path), registries=registries)


def parse_overrides(opts: list[str]) -> list[tuple[str, Any]]:
    """``["a.b=1", "c.d", "2"]`` -> ``[("a.b", 1), ("c.d", 2)]``."""
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(opts):
        item = opts[i]
        if "=" in item:
            key, raw = item.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(opts):
                raise DetkdError(f"--opts: '{item}' has no value (use KEY=VALUE or KEY VALUE)")
            key, raw = item, opts[i + 1]
            i += 2
        if not key or key.startswith(".") or key.endswith("."):
            raise DetkdError(f"--opts: invalid key '{key}'")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        pairs.append((key, value))
    return pairs


def apply_overrides(tree: dict, pairs: list[tuple[str, Any]], origins: dict,
                    registries: Registries = NO_REGISTRIES) -> dict:
    for key, value in pairs:
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise DetkdError(f"--opts: '{key}': '{part}' is not a section")
            node = child
        section = ".".join(parts[:-1])
        if parts[-1] == "type" and section in DATASET_SECTIONS:
            retyped = _retyped(node, value, registries, lambda k: origins.get(f"{section}.{k}") == OVERRIDE_SOURCE)
            node.clear()
            node.update(retyped)
        node[parts[-1]] = value
        _record(origins, key, value, OVERRIDE_SOURCE)
    return tree


def key_source(path: str, origins: dict, default_source: str) -> str:
    """The file (or ``--opts``) that set config key ``path`` or its closest parent; error messages start with it."""
    probe = path
    while probe:
        if probe in origins and origins[probe]:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return default_source


def load_tree(path: str | Path, overrides: list[str] | None = None,
              registries: Registries = NO_REGISTRIES) -> tuple[dict, dict]:
    """``(tree, origins)`` of a config file: its ``_base_`` chain merged, the overrides applied
    (``registries``: what a dataset section's change of ``type`` is checked against)."""
    origins: dict = {}
    tree = load_yaml_tree(path, origins, registries=registries)
    return apply_overrides(tree, parse_overrides(overrides or []), origins, registries), origins

