"""What a worker is doing, named: the processor, its function, the line (from ``segment.DOING_FIELDS``).

The local pool names a worker's death with it, the coordinator a stalled call, and the
stats document lists the calls running longer than ``--stall-after``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def where(
    doing: dict[str, int], processors: Sequence[tuple[str, str | None]], inputs: Sequence[str]
) -> dict[str, Any] | None:
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


class StallWatch:
    """Says on stderr when a worker's call has run longer than ``stall_after`` seconds, once, and when it returns.

    ``doing(slot)``: what the worker in ``slot`` does now (``StatsSegment.doing_now``).
    """

    def __init__(
        self,
        slots: int,
        doing: Callable[[int], dict[str, int]],
        stall_after: float,
        processors: Sequence[tuple[str, str | None]],
        inputs: Sequence[str],
        say: Callable[[str], Any] = sys.stderr.write,
    ) -> None:
        self.slots, self.doing, self.after_ns = slots, doing, int(stall_after * 1e9)
        self.processors, self.inputs, self.say = processors, inputs, say
        self.reported: dict[int, tuple[int, str]] = {}  # slot -> (since_ns, what) of the stall it said

    def check(self, now: int | None = None) -> None:
        now = time.perf_counter_ns() if now is None else now
        for slot in range(self.slots):
            d = self.doing(slot)
            w = where(d, self.processors, self.inputs) if d.get("alive") else None
            old = self.reported.get(slot)
            if old is not None and (w is None or w["since_ns"] != old[0]):
                self.say(f"mpobs: worker {slot}: {old[1]} is over after {(now - old[0]) / 1e9:.1f} s\n")
                del self.reported[slot]
            if w is not None and slot not in self.reported and now - w["since_ns"] >= self.after_ns:
                what = describe(w)
                self.say(
                    f"mpobs: warning: worker {slot} stalled: {what} has run for {(now - w['since_ns']) / 1e9:.0f} s\n"
                )
                self.reported[slot] = (w["since_ns"], what)


class OutputWait:
    """When the run is held by its output, in the segment: ``output_held_ns`` (closed intervals) and
    ``output_held_since_ns`` (the open one's start, 0 if none), on ``time.perf_counter_ns``.

    The coordinator ``hold``s while its backlog of tasks ahead of the output is full, and
    while it writes the output (a slow reader of a pipe stops it there); ``held_ns`` tells a
    worker how much of the time it waited for a task overlapped (``held_ns(end) - held_ns(start)``).
    One writer (the coordinator); readers need no lock: whole int64 values.
    """

    def __init__(self, seg: Any) -> None:
        self.seg = seg
        self.depth = 0

    def hold(self) -> None:
        self.depth += 1
        if self.depth == 1:
            self.seg.set_system(output_held_since_ns=time.perf_counter_ns())

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            since = self.seg.system_value("output_held_since_ns")
            total = self.seg.system_value("output_held_ns") + time.perf_counter_ns() - since
            self.seg.set_system(output_held_ns=total, output_held_since_ns=0)

    @staticmethod
    def held_ns(seg: Any, now: int) -> int:
        """The run's time held by its output until ``now``."""
        since = seg.system_value("output_held_since_ns")
        return seg.system_value("output_held_ns") + (now - since if since else 0)
