"""Typed step options and summaries: a step declares each once, as a dataclass.

Options::

    @dataclass(frozen=True)
    class HelloOptions(StepOptions):
        who: str = option("world", help="Whom to greet.")
        times: int = option(1, help="How many greetings.", unit="count", min=1, max=10)

Each field carries its flag (``--times``: from the field's name unless ``flag`` says otherwise),
its default, unit, range or choices and help. From that one declaration come:

- the click options of ``sessionkit step NAME`` (:meth:`StepOptions.click_params`), with the help,
  the default and the range in ``--help``;
- the values a step starts from when none is given (the dataclass's defaults), which ``sessionkit
  run`` uses;
- the one check of every value: :meth:`StepOptions.parse` turns the text of the command line (or
  values given from Python) into typed values, and building the dataclass checks ranges and choices.
  A bad value raises :class:`OptionError`, a one-line :class:`~sessionkit.errors.UsageError` that
  names the flag (exit status 2).

Summaries::

    @dataclass
    class HelloSummary(StepSummary):
        who: str | None = fact(None, help="Whom it greeted.")
        took_s: float | None = fact(None, unit="s", help="How long the greeting took.")

A step returns its summary in :class:`~sessionkit.steps.StepResult`; it is stored as JSON in
``steps.summary`` (:meth:`StepSummary.to_json`) and read back by the report with
:meth:`StepSummary.from_json`, which gives a key that an older sessionkit did not write the field's
default (None) and leaves out keys it does not know, so that old databases still render.

This module imports nothing heavy: click is imported inside :meth:`StepOptions.click_params` only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

SPEC_KEY = "sessionkit"  # the key of a field's declaration in dataclasses.field(metadata=...)


class OptionError(UsageError):
    """A bad option value: ``Invalid value for '--flag': problem`` (the wording of click's own
    usage errors), exit status 2. ``flag`` and ``problem`` are kept apart for the CLI."""

    def __init__(self, flag: str, problem: str):
        super().__init__(f"Invalid value for '{flag}': {problem}")
        self.flag, self.problem = flag, problem


@dataclass(frozen=True)
class OptionSpec:
    """One option's declaration; see :func:`option` for the meaning of each field."""

    name: str
    flag: str
    help: str
    kind: type  # str, int, float or bool (a flag); the type of each value when ``parse`` is None
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None
    multiple: bool = False
    metavar: str | None = None
    default_text: str | None = None
    dump: Callable[[Any], Any] | None = None
    default: Any = None

    @property
    def range_text(self) -> str | None:
        """The range in click's notation: ``1<=x<=20``, ``x>=1``, ``x>0``; None without one."""
        if self.max is None:
            if self.min is None:
                return None
            return f"x>{self.min}" if self.min_open else f"x>={self.min}"
        if self.min is None:
            return f"x<={self.max}"
        return f"{self.min}{'<' if self.min_open else '<='}x<={self.max}"

    def check(self, value) -> None:
        """Raise :class:`OptionError` when a typed value is outside the range or the choices."""
        for item in (value if self.multiple else (value,)):
            if item is None:
                continue
            if self.choices is not None and item not in self.choices:
                raise OptionError(self.flag, f"{item!r} is not one of "
                                             f"{', '.join(repr(c) for c in self.choices)}.")
            if self.min is not None or self.max is not None:
                low_bad = self.min is not None and (item <= self.min if self.min_open
                                                    else item < self.min)
                high_bad = self.max is not None and item > self.max
                if low_bad or high_bad:
                    raise OptionError(self.flag, f"{item} is not in the range "
                                                 f"{self.range_text}.")

    def convert(self, raw):
        """A value from the command line (text) or from Python -> the typed value, unchecked."""
        if self.multiple:
            items = (raw,) if isinstance(raw, str) or not _iterable(raw) else tuple(raw)
            out = []
            for item in items:
                value = self._one(item)
                out.extend(value) if isinstance(value, (tuple, list)) else out.append(value)
            return tuple(out)
        return self._one(raw)

    def _one(self, raw):
        if self.parse is not None:
            if not isinstance(raw, str):
                return raw  # already the parsed type (a caller in Python)
            try:
                return self.parse(raw)
            except UsageError as exc:
                raise OptionError(self.flag, str(exc).removeprefix(f"bad {self.flag} ")) from None
        if self.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise OptionError(self.flag, f"{raw!r} is not a valid boolean.")
        if self.kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise OptionError(self.flag, f"{raw!r} is not a valid integer.")
            try:
                return int(raw.strip() if isinstance(raw, str) else raw)
            except (TypeError, ValueError):
                raise OptionError(self.flag, f"{raw!r} is not a valid integer.") from None
        if self.kind is float:
            try:
                value = float(raw.strip() if isinstance(raw, str) else raw)
            except (TypeError, ValueError):
                value = math.nan
            if isinstance(raw, bool) or not math.isfinite(value):
                raise OptionError(self.flag, f"{raw!r} is not a valid float.")
            return value
        if not isinstance(raw, str):
            raise OptionError(self.flag, f"{raw!r} is not text.")
        return raw

    def help_text(self) -> str:
        """The help line with its bracket, as click writes one: ``[default: 3; 1<=x<=20]``."""
        extra = []
        shown = self.default_text
        if shown is None and self.default not in (None, False, ()):
            shown = str(self.dump(self.default) if self.dump else self.default)
        if shown is not None:
            extra.append(f"default: {shown}")
        numeric = self.parse is None and self.kind in (int, float)  # given as a plain number
        if numeric and self.range_text:
            extra.append(self.range_text)
        if numeric and self.unit not in (None, "count"):
            extra.append(f"unit: {self.unit}")
        return f"{self.help}  [{'; '.join(extra)}]" if extra else self.help

    def click_metavar(self) -> str | None:
        if self.metavar:
            return self.metavar
        if self.choices:
            return "[" + "|".join(self.choices) + "]"
        if self.parse is None and self.kind in (int, float):
            return ("INTEGER" if self.kind is int else "FLOAT") + (" RANGE" if self.range_text else "")
        return None


def _iterable(value) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def option(default: Any = None, *, help: str, flag: str | None = None, type: type | None = None,
           unit: str | None = None, min: float | None = None, max: float | None = None,
           min_open: bool = False, choices: tuple[str, ...] | None = None,
           parse: Callable[[str], Any] | None = None, multiple: bool = False,
           metavar: str | None = None, default_text: str | None = None,
           dump: Callable[[Any], Any] | None = None):
    """Declare one option of a :class:`StepOptions` dataclass (a :func:`dataclasses.field`).

    - ``default``: the typed value when the option is not given (a tuple for ``multiple``);
      ``False`` makes a flag.
    - ``help``: the sentence of ``--help``.
    - ``flag``: the command-line name, default ``--`` and the field's name with ``-`` for ``_``.
    - ``type``: ``str``, ``int``, ``float`` or ``bool``; default: the default's type (``str`` for
      None).
    - ``unit``: the unit of the typed value (``s``, ``count``...), shown in ``--help`` for numbers.
    - ``min``/``max`` (``min_open``: min itself excluded), ``choices``: the allowed values.
    - ``parse``: text -> typed value, raising :class:`~sessionkit.errors.UsageError` (for
      durations, configs...); it may return a tuple to give several values of a ``multiple``.
    - ``multiple``: repeatable; the typed value is a tuple, in the order given.
    - ``metavar``, ``default_text``: how ``--help`` names the value and shows the default.
    - ``dump``: typed value -> what is stored as JSON in ``steps.options`` (default: as it is).
    """
    spec = {"flag": flag, "help": help, "kind": type, "unit": unit, "min": min, "max": max,
            "min_open": min_open, "choices": tuple(choices) if choices else None, "parse": parse,
            "multiple": multiple, "metavar": metavar, "default_text": default_text, "dump": dump}
    return dataclasses.field(default=default, metadata={SPEC_KEY: spec})


_SPECS: dict[type, tuple[OptionSpec, ...]] = {}


class StepOptions:
    """Base of a step's options dataclass (``@dataclass(frozen=True)`` subclasses, fields made
    with :func:`option`). An instance holds checked, typed values: building one checks them."""

    def __post_init__(self):
        for spec in self.specs():
            spec.check(getattr(self, spec.name))

    @classmethod
    def specs(cls) -> tuple[OptionSpec, ...]:
        """The declarations of the fields, in order."""
        if cls not in _SPECS:
            specs = []
            for f in dataclasses.fields(cls):
                declared = dict(f.metadata.get(SPEC_KEY) or {})
                if not declared:
                    raise TypeError(f"{cls.__name__}.{f.name} is not declared with option()")
                default = f.default if f.default is not dataclasses.MISSING else None
                kind = declared.pop("kind") or (builtin_type(default) if not declared["multiple"]
                                                else str)
                declared["flag"] = declared["flag"] or "--" + f.name.replace("_", "-")
                specs.append(OptionSpec(name=f.name, kind=kind, default=default, **declared))
            _SPECS[cls] = tuple(specs)
        return _SPECS[cls]

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | StepOptions | None = None):
        """Typed, checked options from ``raw``: field name -> text from the command line or a
        value from Python. A missing or None value takes the default. An instance of ``cls`` is
        returned as it is. Raises :class:`OptionError` (or UsageError for an unknown name)."""
        if isinstance(raw, cls):
            return raw
        if isinstance(raw, StepOptions):
            raise UsageError(f"options of {type(raw).__name__} given where {cls.__name__} "
                             "is wanted")
        raw = dict(raw or {})
        specs = {s.name: s for s in cls.specs()}
        unknown = sorted(set(raw) - set(specs))
        if unknown:
            raise UsageError(f"unknown option {unknown[0]!r}; the options are: "
                             f"{', '.join(specs) or 'none'}")
        values = {name: specs[name].convert(value) for name, value in raw.items()
                  if value is not None}
        return cls(**values)

    @classmethod
    def click_params(cls) -> list:
        """One click.Option per field. Their values arrive as text (None when not given), for
        :meth:`parse`: the checking is done there, once."""
        import click

        params = []
        for spec in cls.specs():
            if spec.kind is bool and not spec.multiple:
                params.append(click.Option([spec.flag, spec.name], is_flag=True, default=None,
                                           help=spec.help_text()))
                continue
            params.append(click.Option([spec.flag, spec.name], multiple=spec.multiple,
                                        default=None, metavar=spec.click_metavar(),
                                        help=spec.help_text()))
        return params

    def to_json(self) -> dict:
        """The values as stored in ``steps.options``."""
        out = {}
        for spec in self.specs():
            value = getattr(self, spec.name)
            if spec.dump is not None and value is not None:
                value = tuple(spec.dump(v) for v in value) if spec.multiple else spec.dump(value)
            out[spec.name] = list(value) if isinstance(value, tuple) else value
        return out


def file_path(text: str) -> str:
    """The ``parse`` of an option naming a file to write: the path as given, refused when it is
    empty, holds a NUL character (no file name can) or names a folder, and when it is ``-``,
    which stands for standard output elsewhere (``-o -``): a step keeps the file it writes as one
    of its files, and standard output carries the step's progress (a file named ``-`` is
    ``./-``)."""
    import os

    if not text.strip():
        raise UsageError("an empty file name.")
    if text == "-":
        raise UsageError("'-' (standard output) is not taken here: the step keeps this file "
                         "among its files, and standard output carries its progress; give a file "
                         "path (./- for a file named '-').")
    if "\x00" in text:
        raise UsageError(f"{text!r} contains a NUL character")
    if os.path.isdir(text):
        raise UsageError(f"file {text!r} is a directory.")
    return text


def builtin_type(default) -> type:
    """The option type a default implies: bool, int, float, else str."""
    for kind in (bool, int, float):
        if isinstance(default, kind):
            return kind
    return str


@dataclass(frozen=True)
class NoOptions(StepOptions):
    """The options of a step that takes none."""


# --------------------------------------------------------------------------------------------
# Summaries


def fact(default: Any = None, *, help: str, unit: str | None = None):
    """Declare one field of a :class:`StepSummary` dataclass: what it holds (``help``) and its
    ``unit`` (``s``, ``TFLOP/s``, ``count``, ``fraction``...; None for text and flags)."""
    return dataclasses.field(default=default, metadata={SPEC_KEY: {"help": help, "unit": unit}})


class StepSummary:
    """Base of a step's summary dataclass (``@dataclass`` subclasses, fields made with
    :func:`fact`, each with a default so that an old summary without it still reads)."""

    @classmethod
    def from_json(cls, data):
        """A summary read back from ``steps.summary`` (a dict, or its JSON text): keys an older
        sessionkit did not write take their default, keys this one does not know are left out,
        a value whose type is not the field's (text where a number was declared, a number where
        a list was) takes the default too, a list keeps only its items of the declared type, and
        anything that is not a JSON object reads as an empty summary."""
        if isinstance(data, str):
            import json

            try:
                data = json.loads(data)
            except (ValueError, RecursionError):  # not JSON, or nested too deep
                data = None
        if not isinstance(data, dict):
            data = {}
        hints = _field_types(cls)
        values = {}
        for key, value in data.items():
            if key in hints and value is not None:
                value = _read(value, hints[key])
                if value is not _UNFIT:
                    values[key] = value
        return cls(**values)

    def to_json(self) -> dict:
        """The summary as stored in ``steps.summary`` (a JSON object)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def units(cls) -> dict[str, str | None]:
        """field name -> its unit."""
        return {f.name: (f.metadata.get(SPEC_KEY) or {}).get("unit")
                for f in dataclasses.fields(cls)}


_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls) -> dict[str, Any]:
    """field name -> its annotation, evaluated (``int | None``, ``list[str] | None``...)."""
    if cls not in _TYPES:
        import typing

        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an annotation that cannot be evaluated: take any value for it
            hints = {}
        _TYPES[cls] = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}
    return _TYPES[cls]


_UNFIT = object()


def _read(value, hint):
    """``value`` as a field annotated ``hint`` takes it: as it is when it fits (:func:`_fits`), a
    list without the items that do not fit when the field is a list of a type (``list[dict]``),
    else ``_UNFIT``."""
    import typing

    if _fits(value, hint):
        return value
    if isinstance(value, list):
        for arg in typing.get_args(hint) or ():
            if typing.get_origin(arg) is list and len(typing.get_args(arg)) == 1:
                return [item for item in value if _fits(item, typing.get_args(arg)[0])]
    return _UNFIT


def _fits(value, hint) -> bool:
    """Whether a value read from JSON is of the annotated type: ``int`` (not a bool), ``float``
    (an int too), ``str``, ``bool``, ``list[X]`` and ``dict[K, V]`` item by item, unions; an
    annotation it does not know takes anything."""
    import types
    import typing

    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if origin is not None:
        if not isinstance(origin, type) or not isinstance(value, origin):
            return not isinstance(origin, type)
        args = typing.get_args(hint)
        if origin is list and len(args) == 1:
            return all(_fits(item, args[0]) for item in value)
        if origin is dict and len(args) == 2:
            return all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


__all__ = ["OptionError", "OptionSpec", "StepOptions", "NoOptions", "option", "file_path",
           "StepSummary", "fact"]
