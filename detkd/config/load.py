"""YAML configs with ``_base_`` inheritance, command-line overrides and typed validation.

* ``_base_: path.yaml`` (or a list of paths, relative to the including file) is loaded
  first and the file's own keys are merged into it recursively (mappings merge, every
  other value replaces).
* Overrides ``a.b.c=VALUE`` (or ``a.b.c VALUE`` pairs) are applied last; VALUE is parsed as
  YAML, so ``train.amp=true`` is a bool and ``model.anchor_sizes=[[16],[32]]`` a list.
* The merged mapping is converted into :class:`detkd.config.schema.Config`; an unknown
  key or a wrong type is a :class:`DetkdError` naming the dotted key and the file (or
  ``--opts``) where it was set.
* Dataset sections (``data.train``, ``data.val``) are flat: their ``type`` picks the
  dataclass from the registry ``datasets`` (:mod:`detkd.recipe` passes the options of
  ``detkd.data.build.DATASETS``) and an option of another format is an error. When a later source
  (a file including the one that set them, or ``--opts``) changes a section's ``type``, the
  earlier options that the new type lacks are dropped,
  so ``--opts data.train.type=voc data.train.root=DIR`` works over a coco config.
* Ranges and registries are declared on the fields (:mod:`detkd.config.fields`) and checked
  here for every dataclass built; the registries themselves (the distillation methods'
  sections, ...) are passed in by the layer that owns them (:mod:`detkd.recipe` assembles the
  detection config), so this layer imports none of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from detkd.config.fields import Registry, range_of, registry_of
from detkd.config.schema import ARCH_FAMILIES, FAMILY_OPTIONS, BaseDatasetConfig, DataConfig, ModelConfig
from detkd.errors import DetkdError

OVERRIDE_SOURCE = "--opts"
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# name -> {entry name -> section dataclass}: what registry fields (detkd.config.fields) are built from.
Registries = typing.Mapping[str, typing.Mapping[str, type]]
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


def _merge(base: dict, new: dict, origins: dict, source: str, prefix: str = "", registries: Registries = {}) -> dict:
    """Merge ``new`` into ``base`` recursively, recording which file set each key; a dataset
    section whose ``type`` changes drops the options of the type it had (``registries``)."""
    out = dict(base)
    for key, value in new.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if path in DATASET_SECTIONS and "type" in value:
                out[key] = _retyped(out[key], value["type"], registries)
            out[key] = _merge(out[key], value, origins, source, path + ".", registries)
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
                   registries: Registries = {}) -> dict:
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
        merged = _merge(merged, load_yaml_tree(base_path, base_origins, (*_stack, path), registries), origins, "",
                        registries=registries)
        origins.update(base_origins)
    return _merge(merged, data, origins, str(path), registries=registries)


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


def apply_overrides(tree: dict, pairs: list[tuple[str, Any]], origins: dict, registries: Registries = {}) -> dict:
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


# ----------------------------------------------------------------------------- validation


def key_source(path: str, origins: dict, default_source: str) -> str:
    """The file (or ``--opts``) that set config key ``path`` or its closest parent; error messages start with it."""
    probe = path
    while probe:
        if probe in origins and origins[probe]:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return default_source


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


class _Invalid(Exception):
    pass


@dataclasses.dataclass
class _Ctx:
    origins: dict
    source: str
    registries: Registries

    def where(self, path: str) -> str:
        return key_source(path, self.origins, self.source)


def _convert(value: Any, tp: Any, path: str, ctx: _Ctx) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(f"expected a mapping for section, got {type(value).__name__}")
        return _build(tp, value, path + ".", ctx)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, ctx)
            except _Invalid:
                pass
        raise _Invalid(f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _Invalid(f"must be one of {_type_name(tp)}, got {value!r}{hint}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid(f"expected a mapping, got {value!r}")
        key_tp, item_tp = get_args(tp)
        return {_convert(k, key_tp, f"{path}[{k!r}]", ctx): _convert(v, item_tp, f"{path}.{k}", ctx)
                for k, v in value.items()}
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _Invalid(f"expected {_type_name(tp)} ({len(args)} values), got {value!r}")
        return tuple(_convert(v, a, f"{path}[{i}]", ctx) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise _Invalid(f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            # PyYAML (YAML 1.1) reads 5e-5 (no dot) as a string; the papers' weights are written so.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Invalid(f"expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def _options(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not (registry_of(f) and registry_of(f).by is None)]


def _owners(key: str, entries: typing.Mapping[str, type], but: str = "") -> list[str]:
    """The registry entries (but ``but``) that have an option ``key``."""
    return [name for name, cls in entries.items() if name != but and key in _options(cls)]


def _unknown(path: str, key: str, names: list[str], ctx: _Ctx, entries: typing.Mapping[str, type] = {},
             entry: str = "", keyed: typing.Mapping[str, type] = {}) -> DetkdError:
    """The one line for an unknown key: a close name, else the entries whose option it is."""
    owners = _owners(key, entries, but=entry) if entries else []
    section = path.rpartition(".")[0]
    if keyed and not owners:
        owners = _owners(key, keyed)
        if owners:
            moved = " or ".join(f"'{section + '.' if section else ''}{o}.{key}'" for o in owners)
            return DetkdError(f"{ctx.where(path)}: '{path}' is an option of {', '.join(owners)}, not of "
                              f"'{section or '<root>'}': write it as {moved}")
    if owners:
        return DetkdError(f"{ctx.where(path)}: '{path}' is not an option of {entry} (its options: "
                          f"{', '.join(names)}); '{key}' is an option of {', '.join(owners)}")
    close = difflib.get_close_matches(str(key), names + list(keyed), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return DetkdError(f"{ctx.where(path)}: unknown config key '{path}'{hint}")


def _build(cls: type, data: dict, prefix: str, ctx: _Ctx, entries: typing.Mapping[str, type] = {},
           entry: str = "") -> Any:
    """``cls`` from ``data``; ``entries``/``entry``: the registry and name ``cls`` was picked from."""
    hints = get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = _options(cls)
    keyed = next((f for f in fields if registry_of(f) and registry_of(f).by is None), None)
    sections = ctx.registries.get(registry_of(keyed).name, {}) if keyed else {}
    kwargs: dict[str, Any] = {}
    held: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key in sections and key not in names:
            if value is None:  # null: the section is off (how a file drops one its _base_ set)
                continue
            if not isinstance(value, dict):
                raise DetkdError(f"{ctx.where(path)}: '{path}' is a section: give its options as a mapping "
                                 f"({{}} for the defaults) or null to leave it off, got {value!r}")
            held[key] = _build(sections[key], value, path + ".", ctx, sections, key)
            continue
        if key not in names:
            raise _unknown(path, key, names, ctx, entries, entry, sections)
        try:
            f = next(f for f in fields if f.name == key)
            reg = registry_of(f)
            kwargs[key] = (_build_picked(value, f, path, ctx) if reg is not None and reg.by is not None
                           else _convert(value, hints[key], path, ctx))
        except _Invalid as exc:
            raise DetkdError(f"{ctx.where(path)}: '{path}': {exc}") from None
    if keyed is not None:
        kwargs[keyed.name] = {name: held[name] for name in sections if name in held}  # the registry's order
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise DetkdError(f"{ctx.source}: section '{prefix.rstrip('.') or '<root>'}': {exc}") from None
    for f in fields:
        bounds = range_of(f)
        problem = bounds.problem(getattr(obj, f.name)) if bounds is not None else None
        if problem:
            path = f"{prefix}{f.name}"
            raise DetkdError(f"{ctx.where(path)}: '{path}' {problem}")
    return obj


def _build_picked(value: Any, f: dataclasses.Field, path: str, ctx: _Ctx) -> Any:
    """A discriminated registry field ``f``: the dataclass its value's ``by`` key names (left
    out: the one of the field's default), which must have every key given."""
    reg = registry_of(f)
    entries = ctx.registries.get(reg.name, {})
    if not entries:
        raise DetkdError(f"{ctx.source}: '{path}': the config loader was given no '{reg.name}' registry "
                         f"(load detection configs with detkd.recipe.load_config)")
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping for section, got {type(value).__name__}")
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    if reg.by not in value and not hasattr(default, reg.by):
        raise DetkdError(f"{ctx.where(path)}: '{path}' needs '{reg.by}' (one of {', '.join(entries)})")
    kind = value.get(reg.by, getattr(default, reg.by, None))
    try:
        _convert(kind, Literal[tuple(entries)], f"{path}.{reg.by}", ctx)
    except _Invalid as exc:
        raise DetkdError(f"{ctx.where(f'{path}.{reg.by}')}: '{path}.{reg.by}': {exc}") from None
    own = _options(entries[kind])
    of_any = {k for cls in entries.values() for k in _options(cls)}
    kept = {}
    for key, v in value.items():
        if key not in own and key in of_any:
            # A section saved by an earlier version, whose one dataclass had every entry's
            # options, carries the other entries' options at their defaults ("not set").
            if _at_others_default(key, v, entries):
                continue
            common = [k for k in own if all(k in _options(cls) for cls in entries.values())]
            options = [k for k in own if k not in common] + [k for k in common if k != reg.by]
            raise DetkdError(f"{ctx.where(f'{path}.{key}')}: '{path}.{key}' is not an option of {reg.by} "
                             f"'{kind}' (options: {', '.join(options)})")
        kept[key] = v
    return _build(entries[kind], kept, path + ".", ctx, entries, kind)


def _at_others_default(key: str, value: Any, entries: typing.Mapping[str, type]) -> bool:
    """Whether every entry that has option ``key`` defaults it to ``value`` (same type too)."""
    defaults = [g.default for cls in entries.values() for g in dataclasses.fields(cls) if g.name == key]
    return bool(defaults) and all(d is not dataclasses.MISSING and (d, type(d)) == (value, type(value))
                                  for d in defaults)


def build_dataclass(cls: type, tree: dict, source: str, origins: dict | None = None,
                    registries: Registries | None = None, prefix: str = "") -> Any:
    """A config dataclass ``cls`` from a merged YAML tree, with the type and range checks and
    one-line messages of the detection loader (classification's schema uses it too);
    ``registries`` fill the fields declared with :func:`detkd.config.fields.registry`;
    ``prefix`` (e.g. ``"model."``) is where the tree sits, for messages."""
    return _build(cls, tree, prefix, _Ctx(origins or {}, source, registries or {}))


def load_tree(path: str | Path, overrides: list[str] | None = None,
              registries: Registries = {}) -> tuple[dict, dict]:
    """``(tree, origins)`` of a config file: its ``_base_`` chain merged, the overrides applied
    (``registries``: what a dataset section's change of ``type`` is checked against)."""
    origins: dict = {}
    tree = load_yaml_tree(path, origins, registries=registries)
    return apply_overrides(tree, parse_overrides(overrides or []), origins, registries), origins


def load_model_config(path: str | Path, overrides: list[str] | None = None) -> ModelConfig:
    """Just the ``model`` section of a config file, validated (for readers of model files,
    which need no other section)."""
    tree, origins = load_tree(path, overrides)
    model = tree.get("model") or {}
    if not isinstance(model, dict):
        raise DetkdError(f"{key_source('model', origins, str(path))}: 'model' must be a mapping")
    cfg = build_dataclass(ModelConfig, model, str(path), origins, prefix="model.")
    check_model(cfg, str(path))
    return cfg


def resolve_teacher_config(tree: dict, origins: dict, source: str) -> dict:
    """``teacher.config: FILE.yaml`` takes the teacher's ``model`` section from the config
    the teacher was trained with (path relative to the file that names it); keys under
    ``teacher.model`` still override it."""
    teacher = tree.get("teacher")
    if not isinstance(teacher, dict) or not teacher.get("config"):
        return tree
    ref = teacher["config"]
    named_in = key_source("teacher.config", origins, source)
    if not isinstance(ref, str):
        raise DetkdError(f"{named_in}: 'teacher.config' must be a path")
    base_dir = Path(named_in).parent if named_in not in ("", OVERRIDE_SOURCE) else Path.cwd()
    path = (base_dir / ref).resolve()
    if not path.is_file():
        raise DetkdError(f"{named_in}: teacher config not found: {path}")
    teacher_tree = load_yaml_tree(path)
    model = teacher_tree.get("model", {})
    teacher["model"] = _merge(model, teacher.get("model") or {}, {}, "")
    teacher["config"] = str(path)
    return tree


# ----------------------------------------------------------------------------- range checks


def positive(value: float, key: str, source: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DetkdError(f"{source}: '{key}' must be {bound}, got {value}")


def fraction(value: float, key: str, source: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise DetkdError(f"{source}: '{key}' must be in [0, 1], got {value}")


def check_model(m: ModelConfig, source: str, prefix: str = "model") -> None:
    """Value-range checks of a model section that types alone cannot express."""
    if m.num_classes < 2:
        raise DetkdError(f"{source}: '{prefix}.num_classes' must be >= 2 (background + 1 class), got {m.num_classes}")
    for key in ("min_size", "max_size", "out_channels", "representation_size", "rpn_batch_size_per_image",
                "box_batch_size_per_image", "box_detections_per_img", "roi_output_size"):
        positive(getattr(m, key), f"{prefix}.{key}", source)
    for key in ("rpn_positive_fraction", "box_positive_fraction", "rpn_nms_thresh", "box_nms_thresh",
                "box_score_thresh"):
        fraction(getattr(m, key), f"{prefix}.{key}", source)
    if len(m.image_mean) != 3 or len(m.image_std) != 3:
        raise DetkdError(f"{source}: '{prefix}.image_mean' and '{prefix}.image_std' need 3 values each")
    check_family_options(m, prefix, source)


def check_family_options(m: Any, prefix: str, source: str) -> None:
    """The ``model.<family>`` section of the arch's family only, and its value ranges (how the
    parts fit a backbone is checked where the model is built, in detkd/modeling/families/)."""
    family = ARCH_FAMILIES[m.arch]
    for name, options in FAMILY_OPTIONS.items():
        if options is not None and name != family and getattr(m, name) is not None:
            raise DetkdError(f"{source}: '{prefix}.{name}' is set but '{prefix}.arch' {m.arch!r} is a {family} "
                             f"(the {name} options apply to the {name} archs only)")
    section = getattr(m, family, None) if FAMILY_OPTIONS[family] is not None else None
    if section is None:
        return
    key = f"{prefix}.{family}"  # each value's own range is declared on its field (option(...))
    if getattr(section, "bg_iou_thresh", 0.0) > getattr(section, "fg_iou_thresh", 1.0):
        raise DetkdError(f"{source}: '{key}.bg_iou_thresh' ({section.bg_iou_thresh}) must not exceed "
                         f"'{key}.fg_iou_thresh' ({section.fg_iou_thresh})")
    if hasattr(section, "min_ratio") and not section.min_ratio < section.max_ratio:
        raise DetkdError(f"{source}: '{key}.min_ratio' ({section.min_ratio}) must be below '{key}.max_ratio' "
                         f"({section.max_ratio})")
    for name in ("image_mean", "image_std"):
        value = getattr(section, name, None)
        if value is not None and len(value) != 3:
            raise DetkdError(f"{source}: '{key}.{name}' needs 3 values, got {value}")
    if getattr(section, "image_std", None) and min(section.image_std) <= 0:
        raise DetkdError(f"{source}: '{key}.image_std' must be > 0, got {section.image_std}")
    for name in ("extra_channels", "steps"):
        value = getattr(section, name, None)
        if value is not None and (not value or min(value) <= 0):
            raise DetkdError(f"{source}: '{key}.{name}' must be a non-empty list of positive integers, got {value}")
    if getattr(section, "scales", None) is not None and (not section.scales or min(section.scales) <= 0):
        raise DetkdError(f"{source}: '{key}.scales' must be a non-empty list of positive numbers, got {section.scales}")
    ratios = getattr(section, "aspect_ratios", None)
    if ratios is not None and (not ratios or any(not r or min(r) < 1 for r in ratios)):
        raise DetkdError(f"{source}: '{key}.aspect_ratios' must list, per feature map, ratios >= 1 (each "
                         f"also used inverted), got {ratios}")


# ----------------------------------------------------------------------------- output


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
            out[f.name] = _to_plain(value)
    return out


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return config_to_dict(value)
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def dump_config(cfg: Any) -> str:
    """The merged config as YAML (what is saved beside each run)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_ABSENT = object()


def meaning(value: Any, default: Any = _ABSENT) -> Any:
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
                    out[name] = meaning(section)
                continue
            if same:
                d = getattr(default, f.name)
            else:
                d = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else _ABSENT)
                if dataclasses.is_dataclass(default) and hasattr(default, f.name) and v != getattr(default, f.name):
                    d = _ABSENT  # differs from what the parent's default section says
            if d is _ABSENT or _plain(_to_plain(v)) != _plain(_to_plain(d)):
                out[f.name] = meaning(v, d)
        return out
    if isinstance(value, dict):
        return {k: meaning(v) for k, v in value.items()}
    return _to_plain(value)


def config_hash(cfg: Any, sections: typing.Iterable[str] = ("model", "data", "teacher", "distill"),
                only: typing.Mapping[str, typing.Iterable[str]] | None = None,
                drop: typing.Mapping[str, typing.Iterable[str]] | None = None) -> str:
    """Hash of the parts of a config that decide what a checkpoint means (what ``--resume``
    checks): the ``sections`` of the config; of a section in ``only`` just those keys, of one
    in ``drop`` all but those (e.g. classification's schedule keys of ``train``).

    Every field at its default is left out (:func:`meaning`), so a later version that adds a
    field with a default hashes an older config as it did. A changed default cannot slip
    through either: ``--resume`` hashes the checkpoint's own saved config (every value
    written out) with the running version (:func:`detkd.engine.checkpoint.resume_checkpoint`),
    and the old value, explicit there, differs from the new default."""
    tree = meaning(cfg)
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
