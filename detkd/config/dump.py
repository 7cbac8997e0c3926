"""A config written out: the YAML a run saves (:func:`dump_config`) and the hash of what
decides a checkpoint's meaning (:func:`config_hash`, what ``--resume`` and run reuse compare)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from typing import Any

import yaml

from detkd.config.fields import registry_of

__all__ = ["config_hash", "config_to_dict", "dump_config", "without_defaults"]


def config_to_dict(cfg: Any) -> dict:
    """The config as the nested mapping its YAML is (keyed registry fields flattened back
    into their section: ``distill: {level_map: ..., pkd: {...}}``)."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    out: dict = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        reg = registry_of(f)
        if reg is not None and reg.by is None:
            out.update({name: config_to_dict(section) for name, section in value.items()})
        else:
            out[f.name] = _yaml_value(value)
    return out


def _yaml_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return config_to_dict(value)
    if isinstance(value, dict):
        return {k: _yaml_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_value(v) for v in value]
    return value


def dump_config(cfg: Any) -> str:
    """The merged config as YAML (what is saved beside each run)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


_ABSENT = object()


def without_defaults(value: Any, default: Any = _ABSENT) -> Any:
    """``value`` without what equals its default: of a dataclass, the fields whose value is
    not the field's default (nested sections likewise); of a keyed registry field, each
    section so reduced (a section with every option at its default is ``{}``: present).

    A section compares against the default section of its field when that is of the same
    class, else against its own class's defaults plus, for the fields both classes have, the
    field default's values (so ``type: coco`` still shows against a ``demo`` default)."""
    if dataclasses.is_dataclass(value):
        same = dataclasses.is_dataclass(default) and type(default) is type(value)
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            reg = registry_of(f)
            if reg is not None and reg.by is None:
                for name, section in v.items():
                    out[name] = without_defaults(section)
                continue
            if same:
                d = getattr(default, f.name)
            else:
                d = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else _ABSENT)
                if dataclasses.is_dataclass(default) and hasattr(default, f.name) and v != getattr(default, f.name):
                    d = _ABSENT  # differs from what the parent's default section says
            if d is _ABSENT or _yaml_value(v) != _yaml_value(d):
                out[f.name] = without_defaults(v, d)
        return out
    if isinstance(value, dict):
        return {k: without_defaults(v) for k, v in value.items()}
    return _yaml_value(value)


def config_hash(cfg: Any, sections: typing.Iterable[str] = ("model", "data", "teacher", "distill"),
                only: typing.Mapping[str, typing.Iterable[str]] | None = None,
                drop: typing.Mapping[str, typing.Iterable[str]] | None = None) -> str:
    """Hash of the parts of a config that decide what a checkpoint means (what ``--resume``
    checks): the ``sections`` of the config; of a section in ``only`` just those keys, of one
    in ``drop`` all but those (e.g. classification's schedule keys of ``train``).

    Every field at its default is left out (:func:`without_defaults`), so a later version that adds a
    field with a default hashes an older config as it did. A changed default cannot slip
    through either: ``--resume`` hashes the checkpoint's own saved config (every value
    written out) with the running version (:func:`detkd.engine.checkpoint.resume_checkpoint`),
    and the old value, explicit there, differs from the new default."""
    tree = without_defaults(cfg)
    if isinstance(tree.get("teacher"), dict):
        # The teacher's model section is already merged in; where its YAML lives (an absolute
        # path) must not make a moved checkout's checkpoints unresumable.
        tree["teacher"] = {k: v for k, v in tree["teacher"].items() if k != "config"}
    payload_tree = {k: tree[k] for k in sections if k in tree}
    for key, keep in (only or {}).items():
        payload_tree[key] = {k: tree[key][k] for k in keep if k in tree.get(key, {})}
    for key, skip in (drop or {}).items():
        payload_tree[key] = {k: v for k, v in payload_tree.get(key, {}).items() if k not in set(skip)}
    payload = json.dumps(payload_tree, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
