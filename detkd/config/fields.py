"""What a config field declares about itself: its valid range, or the registry its sections
come from. The loader (:mod:`detkd.config.load`) reads both generically, for every dataclass
it builds, so a new section needs no validation code and no name list elsewhere.

* ``option(default, ge=0)``: a field whose value must be >= 0 (``gt``, ``le``, ``lt`` alike;
  ``nonempty=True``: a list that may be null but not empty). A value out of range is one
  line, ``"<file>: 'distill.pkd.weight' must be >= 0, got -1.0"``. ``weight=True`` marks a
  loss weight (a method with every weight 0 is a no-op: :func:`weights_of`).
* ``registry("methods")``: a ``dict[str, Any]`` field that holds the *other* keys of its
  section, each built as the dataclass of that name in the registry ``"methods"``; the
  registries are passed to the loader by the layer that owns them (detkd/recipe), so the
  config layer never imports the methods or the dataset formats. ``registry("datasets",
  by="type")``: the field is one dataclass, picked by the value of its ``type`` key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Optional

__all__ = ["Range", "Registry", "option", "registry", "range_of", "registry_of", "weights_of"]

RANGE = "detkd.range"
WEIGHT = "detkd.weight"
REGISTRY = "detkd.registry"


@dataclass(frozen=True)
class Range:
    """Bounds of a number (``ge`` <= value, ``gt`` < value, value <= ``le``, value < ``lt``),
    or ``nonempty`` for a list; ``None`` values (optional fields left unset) always pass."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    nonempty: bool = False

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is out of range (the end of the one-line message), or None."""
        if value is None:
            return None
        if self.nonempty:
            return "is empty; leave it out (null) for the default" if len(value) == 0 else None
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        bad = ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
               or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))
        if not bad:
            return None
        if low is not None and high is not None:
            left, right = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
            return f"must be in {left}{_num(low)}, {_num(high)}{right}, got {value}"
        op, bound = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else \
            ("<=", self.le) if self.le is not None else ("<", self.lt)
        return f"must be {op} {_num(bound)}, got {value}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Registry:
    """The sections of a field come from the registry ``name`` given to the loader: keyed
    (``by`` None: each other key of the section names one entry) or discriminated (``by`` a
    key, e.g. ``"type"``: its value names the one entry the field holds)."""

    name: str
    by: Optional[str] = None


def option(default: Any = MISSING, *, default_factory: Callable[[], Any] | Any = MISSING, ge: Optional[float] = None,
           gt: Optional[float] = None, le: Optional[float] = None, lt: Optional[float] = None,
           nonempty: bool = False, weight: bool = False) -> Any:
    """A ``dataclasses.field`` carrying its :class:`Range` (checked by the loader) and
    whether it is a loss weight."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={RANGE: Range(ge=ge, gt=gt, le=le, lt=lt, nonempty=nonempty), WEIGHT: weight})


def registry(name: str, *, by: Optional[str] = None, default_factory: Callable[[], Any] = dict) -> Any:
    """A field whose section dataclasses come from the loader's registry ``name`` (see
    :class:`Registry`); keyed fields hold ``{entry name: its dataclass instance}``."""
    return dataclasses.field(default_factory=default_factory, metadata={REGISTRY: Registry(name, by)})


def range_of(f: dataclasses.Field) -> Optional[Range]:
    return f.metadata.get(RANGE)


def registry_of(f: dataclasses.Field) -> Optional[Registry]:
    return f.metadata.get(REGISTRY)


def weights_of(cls: type) -> list[str]:
    """The fields of dataclass ``cls`` declared as loss weights (``option(..., weight=True)``)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get(WEIGHT)]
