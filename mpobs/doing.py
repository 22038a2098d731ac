"""What a worker is doing, named: the processor, its function, the line (from ``segment.DOING_FIELDS``).

The local pool names a worker's death with it, the coordinator a stalled call, and the
stats document lists the calls running longer than ``--stall-after``.
"""

from __future__ import annotations

from typing import Any, Sequence


def where(doing: dict[str, int], processors: Sequence[tuple[str, str | None]], inputs: Sequence[str]) -> dict[str, Any] | None:
    """The call ``doing`` describes, or None between calls.

    ``processors``: (id, function or None) per processor in config order; ``inputs``: the
    names records give the inputs. ``line`` is ``name:N`` (``name:N-M`` for a batch call).
    """
    p = doing.get("doing_proc", 0)
    if not 0 < p <= len(processors):
        return None
    pid, function = processors[p - 1]
    k, first, n = doing["doing_input"], doing["doing_line"], doing["doing_lines"]
    name = inputs[k] if 0 <= k < len(inputs) else f"input {k}"
    line = f"{name}:{first}" if n <= 1 else f"{name}:{first}-{first + n - 1}"
    return {"processor": pid, "function": function, "line": line, "since_ns": doing["doing_since_ns"]}


def describe(w: dict[str, Any]) -> str:
    """``processor 'p' (function m:f) at line in.log:12``."""
    fn = f" (function {w['function']})" if w.get("function") else ""
    return f"processor {w['processor']!r}{fn} at line {w['line']}"
