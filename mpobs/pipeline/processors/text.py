"""Processors that rewrite a line's text: line_counter, uppercase, lowercase."""

from __future__ import annotations

import string
from collections.abc import Callable

from mpobs.pipeline.batch import Batch
from mpobs.pipeline.processors.base import ErrorList, Processor, Spec, register


@register("line_counter")
class LineCounter(Processor):
    """Formats each line: ``"Line {count}: {line}"``.

    Fields: ``{count}`` the 1-based line number in the run (it goes on across inputs),
    ``{line}`` the text, ``{file}`` the input's name as given (``-`` for standard input),
    ``{file_line}`` the line's number within that input.
    """

    keys = frozenset({"format"})

    def __init__(self, pid: str, spec: Spec) -> None:
        super().__init__(pid, spec)
        fmt = spec.get("format", str, "Line {count}: {line}")
        self.format_lines = _compile_format(fmt, spec)

    def process(self, batch: Batch, errors: ErrorList) -> Batch:
        pos = self.position
        return Batch(batch.nums, self.format_lines(batch.nums, batch.texts, pos.file, pos.offset), batch.tags)


_FIELDS = {"count": "{n}", "line": "{t}", "file": "{f}", "file_line": "{n - o}"}


def _compile_format(fmt: str, spec: Spec) -> Callable[[list[int], list[str], str, int], list[str]]:
    """``"Line {count}: {line}"`` -> a function formatting a whole batch with one f-string.

    An f-string in a list comprehension is the fastest way CPython has to build
    these strings. The literal parts are passed in as default arguments, never
    pasted into the source, so nothing in the format can become code; braces in
    a line are an argument's value, never a field.
    """
    pieces: list[str] = []
    defaults: dict[str, str] = {}
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as err:
        msg = f"format {fmt!r} is not valid: {err} (write {{{{ and }}}} for literal braces)"
        raise spec.error(msg) from err
    for literal, field, fspec, conv in parsed:
        if literal:
            name = f"_l{len(defaults)}"
            defaults[name] = literal
            pieces.append("{" + name + "}")
        if field is None:
            continue
        if field not in _FIELDS or fspec or conv:
            known = ", ".join("{" + k + "}" for k in _FIELDS)
            msg = f"format {fmt!r} has the field {{{field}}}; only {known} are known"
            raise spec.error(msg)
        pieces.append(_FIELDS[field])
    params = "".join(f", {name}={name}" for name in defaults)
    source = f"lambda nums, texts, f, o{params}: [f{''.join(pieces)!r} for n, t in zip(nums, texts)]"
    return eval(source, {}, dict(defaults))


class _CaseProcessor(Processor):
    def convert(self, text: str) -> str:
        raise NotImplementedError

    def process(self, batch: Batch, errors: ErrorList) -> Batch:
        # One conversion over the joined batch beats one call per line; no
        # character changes case into "\n", so the split gives the lines back
        # unless a line already held a "\n" (possible after a python step).
        texts = self.convert("\n".join(batch.texts)).split("\n")
        if len(texts) != len(batch.texts):
            texts = [self.convert(t) for t in batch.texts]
        return Batch(batch.nums, texts, batch.tags)


@register("uppercase")
class Uppercase(_CaseProcessor):
    """``str.upper`` of each line."""

    convert = staticmethod(str.upper)  # type: ignore[assignment]


@register("lowercase")
class Lowercase(_CaseProcessor):
    """``str.lower`` of each line."""

    convert = staticmethod(str.lower)  # type: ignore[assignment]
