"""Processors that rewrite a line's text: line_counter, uppercase, lowercase."""

from __future__ import annotations

import string

from mpobs.batch import Batch
from mpobs.processors.base import ErrorList, Processor, Spec, register


@register("line_counter")
class LineCounter(Processor):
    """Formats each line with its 1-based input line number: ``"Line {count}: {line}"``."""

    keys = frozenset({"format"})

    def __init__(self, pid: str, spec: Spec) -> None:
        super().__init__(pid, spec)
        fmt = spec.get("format", str, "Line {count}: {line}")
        template, self.fields = _compile_format(fmt, spec)
        self.template = template

    def process(self, batch: Batch, errors: ErrorList) -> Batch:
        tmpl = self.template
        fields = self.fields
        # '%' formatting of a zipped tuple: one C call per line, and braces or
        # percent signs inside the line are only ever an argument, never a field.
        if fields == ("count", "line"):
            texts = [tmpl % pair for pair in zip(batch.nums, batch.texts)]
        elif fields == ("line", "count"):
            texts = [tmpl % pair for pair in zip(batch.texts, batch.nums)]
        else:
            texts = [
                tmpl % tuple(n if f == "count" else t for f in fields) for n, t in zip(batch.nums, batch.texts)
            ]
        return Batch(batch.nums, texts, batch.tags)


def _compile_format(fmt: str, spec: Spec) -> tuple[str, tuple[str, ...]]:
    """``"Line {count}: {line}"`` -> (``"Line %d: %s"``, ("count", "line"))."""
    parts: list[str] = []
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as err:
        msg = f"format {fmt!r} is not valid: {err} (write {{{{ and }}}} for literal braces)"
        raise spec.error(msg) from err
    for literal, field, fspec, conv in parsed:
        parts.append(literal.replace("%", "%%"))
        if field is None:
            continue
        if field not in ("count", "line") or fspec or conv:
            msg = f"format {fmt!r} has the field {{{field}}}; only {{count}} and {{line}} are known"
            raise spec.error(msg)
        parts.append("%d" if field == "count" else "%s")
        fields.append(field)
    return "".join(parts), tuple(fields)


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
