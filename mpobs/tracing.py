"""Per-line traces: which lines are sampled, and what each step did to them."""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from typing import Any

import numpy as np

from mpobs.batch import Batch
from mpobs.dag import Node
from mpobs.processors import ErrorList

_GOLDEN = np.uint64(2654435761)  # Knuth's multiplicative hash
_MASK = np.uint64(0xFFFFFFFF)


def sampled(first: int, count: int, rate: float) -> list[int]:
    """The line numbers in ``first .. first+count-1`` that are traced at ``rate``.

    A pure function of the line number, so the same lines are traced whatever
    the worker count or task boundaries. Vectorized: ~10 us for 2,000 lines.
    """
    if rate >= 1.0:
        return list(range(first, first + count))
    nums = np.arange(first, first + count, dtype=np.uint64)
    h = (nums * _GOLDEN) & _MASK
    return nums[h < np.uint64(int(rate * 2**32))].tolist()


def is_sampled(num: int, rate: float) -> bool:
    """``sampled`` for one line (tests, and readers of a saved trace)."""
    return rate >= 1.0 or ((num * 2654435761) & 0xFFFFFFFF) < int(rate * 2**32)


class BatchTrace:
    """Collects the path of the sampled lines of one batch as the DAG runs it.

    Work is proportional to the traced lines (binary search in the sorted line
    numbers), not to the batch.
    """

    def __init__(self, nums: list[int], batch: Batch, input_name: str, clock: Any = time.time) -> None:
        self.clock = clock
        first = batch.nums[0] if batch.nums else 0
        self.traces: dict[int, dict[str, Any]] = {
            n: {
                "line_id": f"{input_name}:{n}",
                "line_number": n,
                "original_content": batch.texts[n - first],
                "path": [],
                "outputs": [],
            }
            for n in nums
        }
        self.nums = nums

    def step(self, node: Node, inp: Batch, out: Batch | dict[str, Batch], errors: ErrorList) -> None:
        now = self.clock()
        failed = {n: e for n, _, e in errors} if errors else {}
        for n in self.nums:
            lo, hi = bisect_left(inp.nums, n), bisect_right(inp.nums, n)
            if lo == hi:
                continue
            entry: dict[str, Any] = {"processor": node.id, "status": "drop", "timestamp": now}
            if hi - lo > 1:
                entry["copies"] = hi - lo
            if isinstance(out, dict):
                routes = [r for r, b in out.items() if _span(b, n)[0] < _span(b, n)[1]]
                if routes:
                    entry["status"] = "route:" + routes[0]
            else:
                olo, ohi = _span(out, n)
                if olo < ohi:
                    entry["status"] = "emit"
                    before, after = inp.texts[lo:hi], out.texts[olo:ohi]
                    if after != before:
                        if len(after) == 1:
                            entry["text"] = after[0]
                        else:
                            entry["texts"] = after
                    if out.tags is not None and (inp.tags is None or out.tags[olo] != inp.tags[lo]):
                        entry["tags"] = list(out.tags[olo])
            if n in failed:
                exc = failed[n]
                entry["status"] = "error"
                entry["error"] = f"{type(exc).__name__}: {exc}"
            self.traces[n]["path"].append(entry)

    def finish(self, out: Batch) -> list[dict[str, Any]]:
        for n in self.nums:
            lo, hi = _span(out, n)
            self.traces[n]["outputs"] = out.texts[lo:hi]
        return list(self.traces.values())


def _span(b: Batch, n: int) -> tuple[int, int]:
    return bisect_left(b.nums, n), bisect_right(b.nums, n)
