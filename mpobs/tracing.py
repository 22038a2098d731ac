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
        pid = node.proc.id
        failed = {n: e for n, _, e in errors} if errors else None
        in_nums = inp.nums
        size = len(in_nums)
        routed = out if isinstance(out, dict) else None
        # Steps that keep every line in place (line_counter, tag_extractor, ...)
        # return the same nums list: output positions are input positions.
        same = routed is None and out.nums is in_nums  # type: ignore[union-attr]
        traces = self.traces
        for n in self.nums:
            lo = bisect_left(in_nums, n)
            if lo == size or in_nums[lo] != n:
                continue
            hi = lo + 1 if lo + 1 == size or in_nums[lo + 1] != n else bisect_right(in_nums, n, lo)
            entry: dict[str, Any] = {"processor": pid, "status": "drop", "timestamp": now}
            if hi - lo > 1:
                entry["copies"] = hi - lo
            if routed is not None:
                for route, b in routed.items():
                    i = bisect_left(b.nums, n)
                    if i < len(b.nums) and b.nums[i] == n:
                        entry["status"] = "route:" + route
                        break
            else:
                olo, ohi = (lo, hi) if same else _span(out, n)  # type: ignore[arg-type]
                if olo < ohi:
                    entry["status"] = "emit"
                    after = out.texts[olo:ohi]  # type: ignore[union-attr]
                    if after != inp.texts[lo:hi]:
                        if len(after) == 1:
                            entry["text"] = after[0]
                        else:
                            entry["texts"] = after
                    out_tags = out.tags  # type: ignore[union-attr]
                    if out_tags is not None and (inp.tags is None or out_tags[olo] != inp.tags[lo]):
                        entry["tags"] = list(out_tags[olo])
            if failed is not None and n in failed:
                exc = failed[n]
                entry["status"] = "error"
                entry["error"] = f"{type(exc).__name__}: {exc}"
            traces[n]["path"].append(entry)

    def finish(self, out: Batch) -> list[dict[str, Any]]:
        for n in self.nums:
            lo, hi = _span(out, n)
            self.traces[n]["outputs"] = out.texts[lo:hi]
        return list(self.traces.values())


def _span(b: Batch, n: int) -> tuple[int, int]:
    return bisect_left(b.nums, n), bisect_right(b.nums, n)
