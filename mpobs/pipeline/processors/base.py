"""The processor base class, the type registry and typed access to a processor's config."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

from mpobs.errors import ConfigError
from mpobs.pipeline.batch import Batch

#: type name -> processor class. Filled by :func:`register`.
REGISTRY: dict[str, type[Processor]] = {}

#: (line number, text, exception) for each line a processor failed on.
ErrorList = list[tuple[int, str, BaseException]]


def register(type_name: str) -> Callable[[type[Processor]], type[Processor]]:
    """Class decorator: make a processor class available under ``type_name``."""

    def deco(cls: type[Processor]) -> type[Processor]:
        if type_name in REGISTRY:
            msg = f"processor type {type_name!r} is already registered by {REGISTRY[type_name].__name__}"
            raise ValueError(msg)
        cls.type_name = type_name
        REGISTRY[type_name] = cls
        return cls

    return deco


def json_type(value: Any) -> str:
    """How a JSON value's type reads in a message."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


_MISSING = object()


class Spec:
    """One processor's config object, read with types checked and errors that name the step."""

    def __init__(self, raw: dict[str, Any], pid: str, type_name: str) -> None:
        self.raw = raw
        self.where = f"processor {pid!r} ({type_name})"

    def error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _MISSING, what: str = "") -> Any:
        if key not in self.raw:
            if default is _MISSING:
                raise self.error(f"missing key {key!r}")
            return default
        value = self.raw[key]
        # bool is an int in Python but not a number in JSON.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.error(f"{key} must be {what or _kind_name(kind)}, got {json_type(value)}")
        return value

    def regex(self, key: str, value: Any = _MISSING, flags: int = 0) -> re.Pattern[str]:
        pattern = self.get(key, str) if value is _MISSING else value
        if not isinstance(pattern, str):
            raise self.error(f"{key} must be a string (a regex), got {json_type(pattern)}")
        try:
            return re.compile(pattern, flags)
        except re.error as err:
            msg = f"{key} is not a valid regex ({pattern!r}): {err}"
            raise self.error(msg) from err


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in _as_tuple(kind)))


class Position:
    """Where the running task's lines come from: its input's name as given, and ``offset``
    such that a line's number within that input is its run-wide number minus ``offset``.
    One per pipeline, set before each task (a task never spans two inputs)."""

    __slots__ = ("file", "input", "offset")

    def __init__(self) -> None:
        self.file = ""
        self.offset = 0
        self.input = 0  # its index among the run's inputs


class Processor:
    """A step of the DAG. Subclasses implement :meth:`process` on whole batches.

    ``keys`` names the config keys a type accepts besides type, id and inputs;
    anything else is a config error (a typo should not be silently ignored).
    """

    type_name: ClassVar[str] = ""
    keys: ClassVar[frozenset[str]] = frozenset()
    #: names a router sends lines to; downstream steps name them as "<id>.<route>"
    routes: tuple[str, ...] = ()
    #: tags this step can add; each gets an exact counter in the stats segment
    tags_added: tuple[str, ...] = ()
    #: True for steps that count lines per key (their counts merge across workers)
    counts_keys: ClassVar[bool] = False
    #: True for steps that time each call of a user function into ``calls`` (a histogram)
    times_calls: ClassVar[bool] = False

    def __init__(self, pid: str, spec: Spec) -> None:
        self.id = pid
        self.spec = spec
        #: per-tag (tag_extractor) or per-key (counter) counts since the last take
        self.key_counts: Counter[str] = Counter()
        #: the pipeline's (``Pipeline.position``), for steps that show where a line is from
        self.position = Position()
        #: the pipeline's (``Pipeline.doing``): what the worker is doing, for a step that calls per line
        self.doing: Any = [0] * 5

    def process(self, batch: Batch, errors: ErrorList) -> Batch | dict[str, Batch]:
        """Process a batch; a router returns {route: batch}.

        A processor that can fail on single lines appends (line number, text,
        exception) to ``errors`` and leaves the line out. If ``process`` raises,
        the engine retries the batch line by line to find the failing lines.
        """
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Settings worth showing (validate, /dag)."""
        return {k: v for k, v in self.spec.raw.items() if k not in ("type", "id", "inputs")}
