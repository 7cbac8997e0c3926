"""Typed config dataclasses from a YAML tree (:mod:`detkd.config.tree`): types converted
and checked, unknown keys refused with a close name, each field's range
(:func:`detkd.config.fields.option`) and each section's rules across its fields
(:func:`detkd.config.fields.broken_rule`) checked, registry fields filled from the
``registries`` passed in by the layer that owns them (:mod:`detkd.recipe` for detection), so
this layer imports none of them. Every error is one :class:`DetkdError` line naming the
dotted key and the file (or ``--opts``) that set it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from detkd.config.fields import broken_rule, one_of, range_of, registry_of
from detkd.config.tree import NO_REGISTRIES, Registries, key_source
from detkd.errors import DetkdError

__all__ = ["build_dataclass"]

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


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


def _unknown(path: str, key: str, names: list[str], ctx: _Ctx, entries: typing.Mapping[str, type] = NO_REGISTRIES,
             entry: str = "", keyed: typing.Mapping[str, type] = NO_REGISTRIES) -> DetkdError:
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


def _build(cls: type, data: dict, prefix: str, ctx: _Ctx, entries: typing.Mapping[str, type] = NO_REGISTRIES,
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
                           else _convert(value, _declared_type(f, hints[key], ctx), path, ctx))
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
    broken = broken_rule(obj, prefix)
    if broken is not None:
        key, message = broken
        raise DetkdError(f"{ctx.where(prefix + key)}: {message}")
    return obj


def _declared_type(f: dataclasses.Field, tp: Any, ctx: _Ctx) -> Any:
    """The type ``f``'s value is converted to: for a field naming a registry entry
    (``option(..., one_of=...)``), the ``Literal`` of that registry's names."""
    entries = ctx.registries.get(one_of(f) or "", {})
    return Literal[tuple(entries)] if entries else tp


def _build_picked(value: Any, f: dataclasses.Field, path: str, ctx: _Ctx) -> Any:
    """A discriminated registry field ``f``: the dataclass its value's ``by`` key names (left
    out: the one of the field's default), which must have every key given."""
    reg = registry_of(f)
    entries = ctx.registries.get(reg.name, {})
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    if value is None and default is None:  # an optional section (data.unlabeled), left off
        return None
    if not entries:
        raise DetkdError(f"{ctx.source}: '{path}': the config loader was given no '{reg.name}' registry "
                         f"(load detection configs with detkd.recipe.load_config)")
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping for section, got {type(value).__name__}")
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

