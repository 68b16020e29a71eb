"""Config as data: frozen dataclasses that reject unknown keys by name and round-trip through dicts/JSON.

A model config derives from ``Checked`` and declares its fields with ``option(default, ge=..., gt=...,
lt=...)``: the types, ranges and the class's cross-field ``RULES`` are checked when the config is built
(before any data loads), each failure one ``ConfigError`` naming the key. ``RENAMED`` maps old key names to
new ones (or to a function of the old value giving the new keys): old names still load, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError

C = TypeVar("C")
log = logging.getLogger("llmrec")

_BOUNDS = (("ge", operator.ge, ">="), ("gt", operator.gt, ">"), ("le", operator.le, "<="),
           ("lt", operator.lt, "<"))


def option(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None) -> Any:
    """A config field with its allowed range (``ge``: at least, ``gt``: above, ``le``/``lt``: at most/below)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata=bounds)


class Checked:
    """Base of the model configs: building one checks every field's type and range, then ``RULES``.

    RULES: (key, test(config) -> bool, message with ``{field}`` placeholders) for what depends on
    several keys. RENAMED: old key -> new key, or -> a function of the old value returning new keys."""

    RULES: ClassVar[tuple[tuple[str, Callable[[Any], bool], str], ...]] = ()
    RENAMED: ClassVar[dict[str, str | Callable[[Any], dict[str, Any]]]] = {}
    # what ``llmrec tune`` searches: key -> ("int", low, high, log) | ("float", low, high, log) |
    # ("choice", [values]); checked against the fields by ``check_space``
    SEARCH_SPACE: ClassVar[dict[str, tuple]] = {}

    def __post_init__(self) -> None:
        check(self)


def check(cfg: Any) -> None:
    """Coerce and check each field of ``cfg`` (type, range), then its class's RULES; ConfigError names the key."""
    cls = type(cfg)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cfg):
        value = _check_type(cls, f.name, getattr(cfg, f.name), hints[f.name])
        object.__setattr__(cfg, f.name, value)  # a frozen dataclass: list -> tuple, int -> float
        for key, test, word in _BOUNDS:
            bound = f.metadata.get(key)
            if bound is not None and value is not None and not test(value, bound):
                raise ConfigError(f"{cls.__name__}.{f.name}: must be {word} {bound}, got {value!r}")
    for key, test, message in getattr(cls, "RULES", ()):
        if not test(cfg):
            raise ConfigError(f"{cls.__name__}.{key}: " + message.format(**dataclasses.asdict(cfg)))


def check_space(cls: type, space: dict[str, Any]) -> dict[str, tuple]:
    """``space`` (key -> ("int", low, high, log) | ("float", low, high, log) | ("choice", [values])) checked
    against config ``cls``: every key a field, every bound and choice a valid value of it (ConfigError
    naming the key). Returns it with lists made tuples (JSON round-trips it)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, tuple] = {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{cls.__name__}: the search space is empty; give key -> (kind, ...) pairs")
    for key, spec in space.items():
        where = f"{cls.__name__} search space {key!r}"
        if key not in fields:
            raise ConfigError(f"{where}: not a config key; valid keys: {', '.join(sorted(fields))}")
        spec = tuple(spec) if isinstance(spec, (list, tuple)) else (spec,)
        kind = spec[0] if spec else None
        if kind == "choice":
            if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
                raise ConfigError(f"{where}: expected (\"choice\", [value, ...]), got {spec!r}")
            values = tuple(spec[1])
            out[key] = ("choice", values)
        elif kind in ("int", "float"):
            if len(spec) not in (3, 4) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in spec[1:3]):
                raise ConfigError(f"{where}: expected ({kind!r}, low, high, log), got {spec!r}")
            low, high, log_ = spec[1], spec[2], bool(spec[3]) if len(spec) == 4 else False
            if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
                raise ConfigError(f"{where}: int bounds must be integers, got {low!r}, {high!r}")
            if low > high:
                raise ConfigError(f"{where}: low {low!r} is above high {high!r}")
            if log_ and low <= 0:
                raise ConfigError(f"{where}: a log scale needs low > 0, got {low!r}")
            values = (int(low), int(high)) if kind == "int" else (float(low), float(high))
            out[key] = (kind, *values, log_)
        else:
            raise ConfigError(f"{where}: kind must be int, float or choice, got {kind!r}")
        for v in values:
            try:
                from_dict(cls, {key: v})
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    return out


def _renamed(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``cls.RENAMED``'s old keys replaced by the new ones, each with a deprecation warning."""
    renamed = getattr(cls, "RENAMED", {})
    for old in [k for k in data if k in renamed]:
        new = renamed[old]
        value = data.pop(old)
        repl = new(value) if callable(new) else {new: value}
        for k in repl:
            if k in data:
                raise ConfigError(f"{cls.__name__}: {old!r} is the old name of {k!r}; give only {k!r}")
        log.warning("%s: config key %r is deprecated; read as %s", cls.__name__, old,
                    ", ".join(f"{k}={v!r}" for k, v in repl.items()))
        data.update(repl)
    return data


def _check_type(cls: type, name: str, value: Any, annotation: Any) -> Any:
    """Coerce JSON-ish values (list -> tuple, int -> float) and reject wrong types by field name."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(cls, name, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{cls.__name__}.{name}: {value!r} does not match {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{cls.__name__}.{name}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{cls.__name__}.{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_check_type(cls, name, v, inner) for v in value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{cls.__name__}.{name}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{cls.__name__}.{name}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{cls.__name__}.{name}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{cls.__name__}.{name}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
    """Build config ``cls`` from ``data``; unknown keys and wrong types raise ConfigError naming the key;
    old key names (``cls.RENAMED``) are read as the new ones, with a warning."""
    data = _renamed(cls, dict(data or {}))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _check_type(cls, k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    out = dataclasses.asdict(cfg)
    return json.loads(json.dumps(out))


def load(cls: type[C], path: str | Path) -> C:
    with open(path, encoding="utf-8") as f:
        return from_dict(cls, json.load(f))


def dump(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def usable_cores() -> int:
    """The cores this process may run on (what ``threads=0`` means): its CPU affinity where the system
    has one (Linux), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def json_default(o: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as their Python values."""
    if hasattr(o, "item") and getattr(o, "ndim", None) == 0:
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=3", "learning_rate=0.01"]`` -> dict, values parsed as JSON when they parse (never eval)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set expects KEY=VALUE, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out
