"""What a config field declares about itself: its valid range, or the registry its sections
come from; and what a section declares about its fields together. The builder
(:mod:`detkd.config.build`) reads all three generically, for every dataclass it builds, so a
new section needs no validation code and no name list elsewhere.

* ``option(default, ge=0)``: a field whose value must be >= 0 (``gt``, ``le``, ``lt`` alike;
  of a list, every number in it). ``nonempty=True``: a list that may be null but not empty;
  ``length=3``: a list of exactly 3 values. A value out of range is one line,
  ``"<file>: 'distill.pkd.weight' must be >= 0, got -1.0"`` (``why``: a reason in parentheses
  after the bound; ``says``: the whole rule in words instead, for a list of numbers).
  ``weight=True`` marks a loss weight (a method with every weight 0 is a no-op:
  :func:`weights_of`). ``one_of="methods"``: a string that must name an entry of the loader's
  registry ``"methods"`` (a method's ``name``; the message lists them as for a ``Literal``).
* ``registry("methods")``: a ``dict[str, Any]`` field that holds the *other* keys of its
  section, each built as the dataclass of that name in the registry ``"methods"``; the
  registries are passed to the loader by the layer that owns them (detkd/recipe), so the
  config layer never imports the methods or the dataset formats. ``registry("datasets",
  by="type")``: the field is one dataclass, picked by the value of its ``type`` key.
* A rule across several fields of one section is a method of its dataclass,
  ``broken_rule(self, at) -> None | (field, message)`` (``at``: the section's dotted prefix,
  e.g. ``"model.ssd."``): the builder raises the message, naming the file that set ``field``.
  Rules across sections are checked by the layer that loads the whole config
  (``detkd.recipe.load.check_config``, ``detkd.cls.config.check_cls_config``).

Defaults are written in the form the builder converts YAML to (floats for ``float`` fields,
tuples for ``tuple`` fields), so a config built from defaults equals its saved config.yaml
read back (``tests/test_config.py`` checks every schema).
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Optional

__all__ = ["Range", "Registry", "broken_rule", "one_of", "option", "registry", "range_of", "registry_of", "weights_of"]

RANGE = "detkd.range"
WEIGHT = "detkd.weight"
REGISTRY = "detkd.registry"
ONE_OF = "detkd.one_of"


@dataclass(frozen=True)
class Range:
    """Bounds of a number (``ge`` <= value, ``gt`` < value, value <= ``le``, value < ``lt``),
    or ``nonempty`` for a list; ``None`` values (optional fields left unset) always pass."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    nonempty: bool = False
    length: Optional[int] = None
    why: Optional[str] = None  # the reason of the bound, in parentheses after it
    says: Optional[str] = None  # the rule in words, replacing "must be ..." (lists of numbers)

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` is out of range (the end of the one-line message), or None."""
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return self._list_problem(value)
        return self._bound_problem(value, value)

    def _list_problem(self, value: Any) -> Optional[str]:
        if self.length is not None and len(value) != self.length:
            return self.says_or(f"needs {self.length} values", value)
        if self.nonempty and _has_empty(value):
            return self.says_or("is empty; leave it out (null) for the default", value, got=False)
        for number in _numbers(value):
            problem = self._bound_problem(number, value)
            if problem:
                return problem
        return None

    def says_or(self, text: str, value: Any, got: bool = True) -> str:
        if self.says:
            return f"{self.says}, got {value}"
        return f"{text}, got {value}" if got else text

    def _bound_problem(self, number: Any, value: Any) -> Optional[str]:
        """Why ``number`` (``value`` itself or one of its numbers) breaks the bounds, or None."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le if self.le is not None else self.lt
        bad = ((self.ge is not None and number < self.ge) or (self.gt is not None and number <= self.gt)
               or (self.le is not None and number > self.le) or (self.lt is not None and number >= self.lt))
        if not bad:
            return None
        why = f" ({self.why})" if self.why else ""
        if low is not None and high is not None:
            left, right = "[" if self.ge is not None else "(", "]" if self.le is not None else ")"
            return self.says_or(f"must be in {left}{_num(low)}, {_num(high)}{right}{why}", value)
        op, bound = (">=", self.ge) if self.ge is not None else (">", self.gt) if self.gt is not None else \
            ("<=", self.le) if self.le is not None else ("<", self.lt)
        return self.says_or(f"must be {op} {_num(bound)}{why}", value)


def _has_empty(value: Any) -> bool:
    """Whether the list ``value`` or a list nested in it is empty."""
    return len(value) == 0 or any(_has_empty(v) for v in value if isinstance(v, (list, tuple)))


def _numbers(value: Any) -> list:
    """The numbers of a (nested) list."""
    return [n for v in value for n in (_numbers(v) if isinstance(v, (list, tuple)) else [v])
            if isinstance(n, (int, float)) and not isinstance(n, bool)]


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
           nonempty: bool = False, length: Optional[int] = None, why: Optional[str] = None,
           says: Optional[str] = None, weight: bool = False, one_of: Optional[str] = None) -> Any:
    """A ``dataclasses.field`` carrying its :class:`Range` (checked by the builder), whether
    it is a loss weight, and the registry whose entry it names (``one_of``)."""
    bounds = Range(ge=ge, gt=gt, le=le, lt=lt, nonempty=nonempty, length=length, why=why, says=says)
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={RANGE: bounds, WEIGHT: weight, ONE_OF: one_of})


def registry(name: str, *, by: Optional[str] = None, default_factory: Callable[[], Any] = dict) -> Any:
    """A field whose section dataclasses come from the loader's registry ``name`` (see
    :class:`Registry`); keyed fields hold ``{entry name: its dataclass instance}``."""
    return dataclasses.field(default_factory=default_factory, metadata={REGISTRY: Registry(name, by)})


def range_of(f: dataclasses.Field) -> Optional[Range]:
    return f.metadata.get(RANGE)


def registry_of(f: dataclasses.Field) -> Optional[Registry]:
    return f.metadata.get(REGISTRY)


def one_of(f: dataclasses.Field) -> Optional[str]:
    """The registry whose entry names field ``f`` holds (``option(..., one_of=...)``), or None."""
    return f.metadata.get(ONE_OF)


def weights_of(cls: type) -> list[str]:
    """The fields of dataclass ``cls`` declared as loss weights (``option(..., weight=True)``)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get(WEIGHT)]


def broken_rule(obj: Any, at: str) -> Optional[tuple[str, str]]:
    """``(field, message)`` of the first rule across the fields of section ``obj`` that it
    breaks (its dataclass's ``broken_rule`` method; ``at``: the section's dotted prefix), or None."""
    rule = getattr(type(obj), "broken_rule", None)
    return rule(obj, at) if rule is not None else None
