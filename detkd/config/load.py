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
  dataclass (:data:`detkd.config.schema.DATASET_TYPES`) and an option of another format is
  an error. When a later source (a file including the one that set them, or ``--opts``)
  changes a section's ``type``, the earlier options that the new type lacks are dropped,
  so ``--opts data.train.type=voc data.train.root=DIR`` works over a coco config.
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

from detkd.config.schema import (ARCH_FAMILIES, DATASET_TYPES, FAMILY_OPTIONS, HASHED_WHEN_SET, BaseDatasetConfig,
                                 Config, DataConfig)
from detkd.errors import DetkdError

OVERRIDE_SOURCE = "--opts"
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# Dotted paths of the dataset sections ("data.train", "data.val").
DATASET_SECTIONS = tuple(f"data.{f.name}" for f in dataclasses.fields(DataConfig)
                         if get_type_hints(DataConfig)[f.name] is BaseDatasetConfig)
# The one dataset dataclass of earlier versions had every format's options; these are its
# values for "not set". config.yaml files written then carry them in every section: such a
# value under a type that lacks the key is ignored, and config_hash hashes every section
# in that flat form (so checkpoints made then still resume).
LEGACY_DATASET_DEFAULTS: dict[str, Any] = {
    "image_dir": "", "ann_file": "", "root": "", "classes": None, "use_difficult": False,
}


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


def _dataset_options(kind: Any) -> set[str] | None:
    """Option names of dataset type ``kind`` (None for an unknown type)."""
    cls = DATASET_TYPES.get(kind) if isinstance(kind, str) else None
    return None if cls is None else {f.name for f in dataclasses.fields(cls)}


def _retyped(section: dict, kind: Any, keep: typing.Callable[[str], bool] = lambda key: False) -> dict:
    """``section`` with its ``type`` changed to ``kind``: the options ``kind`` lacks are
    dropped (but those ``keep`` names, which validation then reports)."""
    options = _dataset_options(kind)
    if options is None or kind == section.get("type", BaseDatasetConfig.type):
        return section
    return {k: v for k, v in section.items() if k in options or keep(k)}


def _merge(base: dict, new: dict, origins: dict, source: str, prefix: str = "") -> dict:
    """Merge ``new`` into ``base`` recursively, recording which file set each key."""
    out = dict(base)
    for key, value in new.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if path in DATASET_SECTIONS and "type" in value:
                out[key] = _retyped(out[key], value["type"])
            out[key] = _merge(out[key], value, origins, source, path + ".")
        else:
            out[key] = value
            _record(origins, path, value, source)
    return out


def _record(origins: dict, path: str, value: Any, source: str) -> None:
    origins[path] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _record(origins, f"{path}.{k}", v, source)


def load_yaml_tree(path: str | Path, origins: dict | None = None, _stack: tuple = ()) -> dict:
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
        merged = _merge(merged, load_yaml_tree(base_path, base_origins, (*_stack, path)), origins, "")
        origins.update(base_origins)
    return _merge(merged, data, origins, str(path))


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


def apply_overrides(tree: dict, pairs: list[tuple[str, Any]], origins: dict) -> dict:
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
            retyped = _retyped(node, value, lambda k: origins.get(f"{section}.{k}") == OVERRIDE_SOURCE)
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


def _convert(value: Any, tp: Any, path: str, ctx: tuple[dict, str]) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(f"expected a mapping for section, got {type(value).__name__}")
        if tp is BaseDatasetConfig:
            return _build_dataset(value, path, ctx)
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


def _build(cls: type, data: dict, prefix: str, ctx: tuple[dict, str]) -> Any:
    origins, source = ctx
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise DetkdError(f"{key_source(path, origins, source)}: unknown config key '{path}'{hint}")
        try:
            kwargs[key] = _convert(value, hints[key], path, ctx)
        except _Invalid as exc:
            raise DetkdError(f"{key_source(path, origins, source)}: '{path}': {exc}") from None
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise DetkdError(f"{source}: section '{prefix.rstrip('.') or '<root>'}': {exc}") from None
    # Sections default to their dataclass defaults; explicit sub-dicts were built above.
    return obj


def _build_dataset(data: dict, path: str, ctx: tuple[dict, str]) -> BaseDatasetConfig:
    """A dataset section: the dataclass of its ``type``, which must have every key given."""
    origins, source = ctx
    kind = data.get("type", BaseDatasetConfig.type)
    try:
        _convert(kind, Literal[tuple(DATASET_TYPES)], f"{path}.type", ctx)
    except _Invalid as exc:
        raise DetkdError(f"{key_source(path + '.type', origins, source)}: '{path}.type': {exc}") from None
    cls = DATASET_TYPES[kind]
    own = [f.name for f in dataclasses.fields(cls)]
    common = [f.name for f in dataclasses.fields(BaseDatasetConfig)]
    of_any_type = {f.name for c in DATASET_TYPES.values() for f in dataclasses.fields(c)}
    kept = {}
    for key, value in data.items():
        if key not in own and key in LEGACY_DATASET_DEFAULTS:
            default = LEGACY_DATASET_DEFAULTS[key]
            if (value, type(value)) == (default, type(default)):
                continue  # an earlier version's "not set" (its config.yaml)
        if key not in own and key in of_any_type:
            options = [n for n in own if n not in common] + [n for n in common if n != "type"]
            raise DetkdError(f"{key_source(f'{path}.{key}', origins, source)}: '{path}.{key}' is not an option of "
                             f"type '{kind}' (options: {', '.join(options)})")
        kept[key] = value  # an unknown key: _build names it
    return _build(cls, kept, path + ".", ctx)


def build_dataclass(cls: type, tree: dict, source: str, origins: dict | None = None) -> Any:
    """A config dataclass ``cls`` from a merged YAML tree, with the same type checks and
    one-line messages as :func:`load_config` (classification's schema uses it)."""
    return _build(cls, tree, "", (origins or {}, source))


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


def config_from_dict(tree: dict, origins: dict | None = None, source: str = "<dict>") -> Config:
    cfg = _build(Config, tree, "", (origins or {}, source))
    check_config(cfg, source)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, merge, override and validate a config file."""
    origins: dict = {}
    tree = load_yaml_tree(path, origins)
    tree = apply_overrides(tree, parse_overrides(overrides or []), origins)
    tree = resolve_teacher_config(tree, origins, str(Path(path)))
    return config_from_dict(tree, origins, str(Path(path)))


# ----------------------------------------------------------------------------- range checks


def _positive(value: float, key: str, source: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DetkdError(f"{source}: '{key}' must be {bound}, got {value}")


def _fraction(value: float, key: str, source: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise DetkdError(f"{source}: '{key}' must be in [0, 1], got {value}")


def check_config(cfg: Config, source: str) -> None:
    """Value-range checks that types alone cannot express."""
    m = cfg.model
    if m.num_classes < 2:
        raise DetkdError(f"{source}: 'model.num_classes' must be >= 2 (background + 1 class), got {m.num_classes}")
    for key in ("min_size", "max_size", "out_channels", "representation_size", "rpn_batch_size_per_image",
                "box_batch_size_per_image", "box_detections_per_img", "roi_output_size"):
        _positive(getattr(m, key), f"model.{key}", source)
    for key in ("rpn_positive_fraction", "box_positive_fraction", "rpn_nms_thresh", "box_nms_thresh",
                "box_score_thresh"):
        _fraction(getattr(m, key), f"model.{key}", source)
    if len(m.image_mean) != 3 or len(m.image_std) != 3:
        raise DetkdError(f"{source}: 'model.image_mean' and 'model.image_std' need 3 values each")
    check_family_options(m, "model", source)
    if cfg.teacher is not None:
        check_family_options(cfg.teacher.model, "teacher.model", source)
    t = cfg.train
    _positive(t.epochs, "train.epochs", source)
    _positive(t.batch_size, "train.batch_size", source)
    _positive(t.workers, "train.workers", source, allow_zero=True)
    _positive(t.log_interval, "train.log_interval", source)
    _positive(t.optimizer.lr, "train.optimizer.lr", source)
    _positive(t.optimizer.weight_decay, "train.optimizer.weight_decay", source, allow_zero=True)
    _positive(t.scheduler.warmup_iters, "train.scheduler.warmup_iters", source, allow_zero=True)
    _fraction(t.scheduler.warmup_factor, "train.scheduler.warmup_factor", source)
    if t.max_iters is not None:
        _positive(t.max_iters, "train.max_iters", source)
    if t.clip_grad_norm is not None:
        _positive(t.clip_grad_norm, "train.clip_grad_norm", source)
    _positive(t.eval_interval, "train.eval_interval", source, allow_zero=True)
    _positive(t.checkpoint_interval, "train.checkpoint_interval", source)
    _positive(t.checkpoint_period_iters, "train.checkpoint_period_iters", source, allow_zero=True)
    _positive(cfg.eval.batch_size, "eval.batch_size", source)
    for split in ("train", "val"):
        if getattr(cfg.data, split).max_images is not None:
            _positive(getattr(cfg.data, split).max_images, f"data.{split}.max_images", source)
    if not cfg.output_dir:
        raise DetkdError(f"{source}: 'output_dir' must not be empty")
    if (cfg.teacher is None) != (cfg.distill is None):
        raise DetkdError(f"{source}: a distillation run needs both a 'teacher' and a 'distill' section")
    if cfg.distill is not None:
        d = cfg.distill
        _fraction(d.mu, "distill.mu", source)
        for key in ("nu", "gamma", "lam", "margin", "bg_weight"):
            _positive(getattr(d, key), f"distill.{key}", source, allow_zero=True)
        _positive(d.temperature, "distill.temperature", source)
        if d.chen and d.hint and not d.hint_levels:
            raise DetkdError(f"{source}: 'distill.hint_levels' is empty while 'distill.hint' is on")
        check_methods(d, source)
        if not cfg.teacher.checkpoint:
            raise DetkdError(f"{source}: 'teacher.checkpoint' is required for a distillation run")


# Range rules of the model.<family> option names (RetinaNetOptions, FCOSOptions, SSDOptions...).
_FAMILY_FRACTIONS = ("score_thresh", "nms_thresh", "fg_iou_thresh", "bg_iou_thresh", "iou_thresh", "min_ratio",
                     "max_ratio")
_FAMILY_POSITIVE = ("detections_per_img", "topk_candidates", "center_sampling_radius", "size", "positive_fraction")


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
    key = f"{prefix}.{family}"
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name in _FAMILY_FRACTIONS:
            _fraction(value, f"{key}.{f.name}", source)
        elif f.name in _FAMILY_POSITIVE:
            _positive(value, f"{key}.{f.name}", source)
    if getattr(section, "positive_fraction", 1.0) > 1.0:
        raise DetkdError(f"{source}: '{key}.positive_fraction' must be in (0, 1], got {section.positive_fraction}")
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


def check_methods(d: Any, source: str) -> None:
    """Ranges of the FPN-feature method sections (``distill.pkd`` ...)."""
    for name in ("pkd", "cwd", "mgd", "fgd", "fgfi"):
        section = getattr(d, name)
        if section is None:
            continue
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            key = f"distill.{name}.{f.name}"
            if f.name == "levels":
                if value is not None and not value:
                    raise DetkdError(f"{source}: '{key}' is empty; leave it out (null) for the method's default levels")
            elif f.name in ("temperature",):
                _positive(value, key, source)
            elif f.name in ("lambda_mask", "psi"):
                _fraction(value, key, source)
            else:  # weights
                _positive(value, key, source, allow_zero=True)


# ----------------------------------------------------------------------------- output


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """The merged config as YAML (what is saved beside each run)."""
    return yaml.safe_dump(_plain(config_to_dict(cfg)), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _drop_unset_added_keys(obj: Any, tree: Any) -> None:
    """Remove from ``tree`` (``asdict(obj)``) the keys marked ``HASHED_WHEN_SET`` that are at
    their default, at every depth (``model``, ``teacher.model`` ...)."""
    if not dataclasses.is_dataclass(obj) or not isinstance(tree, dict):
        return
    for f in dataclasses.fields(obj):
        if f.name not in tree:
            continue
        value = getattr(obj, f.name)
        if f.metadata.get(HASHED_WHEN_SET) and f.default is not dataclasses.MISSING and value == f.default:
            del tree[f.name]
        else:
            _drop_unset_added_keys(value, tree[f.name])


def config_hash(cfg: Any, sections: typing.Iterable[str] = ("model", "data", "teacher", "distill"),
                only: typing.Mapping[str, typing.Iterable[str]] | None = None,
                drop: typing.Mapping[str, typing.Iterable[str]] | None = None) -> str:
    """Hash of the parts of a config that decide what a checkpoint means (what ``--resume``
    checks): the ``sections`` of the config tree; of a section in ``only`` just those keys,
    of one in ``drop`` all but those (e.g. classification's schedule keys of ``train``)."""
    tree = config_to_dict(cfg)
    _drop_unset_added_keys(cfg, tree)
    for section in DATASET_SECTIONS:  # the flat form of earlier versions (LEGACY_DATASET_DEFAULTS)
        _, name = section.split(".")
        if isinstance(cfg, Config):  # detection's dataset sections (classification has none)
            tree["data"][name] = {**LEGACY_DATASET_DEFAULTS, **tree["data"][name]}
    if isinstance(tree.get("teacher"), dict):
        # The teacher's model section is already merged in; where its YAML lives (an absolute
        # path) must not make a moved checkout's checkpoints unresumable.
        tree["teacher"] = {k: v for k, v in tree["teacher"].items() if k != "config"}
    payload_tree = {k: _plain(tree[k]) for k in sections}
    for key, keep in (only or {}).items():
        payload_tree[key] = {k: _plain(tree[key][k]) for k in keep}
    for key, skip in (drop or {}).items():
        payload_tree[key] = {k: v for k, v in payload_tree[key].items() if k not in set(skip)}
    payload = json.dumps(payload_tree, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
