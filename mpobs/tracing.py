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


#: One step on the wire: (processor position, status, timestamp, extra fields or None).
Step = tuple[int, str, float, "dict[str, Any] | None"]
#: One trace on the wire: (line number, original text, steps, outputs). Tuples pickle
#: several times faster than the dicts a reader wants; ``expand`` makes those.
CompactTrace = tuple[int, str, list[Step], list[str]]


def expand(trace: CompactTrace, input_name: str, ids: list[str]) -> dict[str, Any]:
    """The trace as readers see it (``--save-traces``, ``/trace``, saved metrics)."""
    n, original, steps, outputs = trace
    path = []
    for p, status, ts, extra in steps:
        entry = {"processor": ids[p], "status": status, "timestamp": ts}
        if extra:
            entry.update(extra)
        path.append(entry)
    return {"line_id": f"{input_name}:{n}", "line_number": n, "original_content": original, "path": path,
            "outputs": outputs}  # fmt: skip


class BatchTrace:
    """Collects the path of the sampled lines of one batch as the DAG runs it.

    Work is proportional to the traced lines (binary search in the sorted line
    numbers), not to the batch; records are compact tuples (see ``expand``).
    """

    def __init__(self, nums: list[int], batch: Batch, clock: Any = time.time) -> None:
        self.clock = clock
        first = batch.nums[0] if batch.nums else 0
        texts = batch.texts
        self.nums = nums
        self.original = [texts[n - first] for n in nums]
        self.paths: list[list[Step]] = [[] for _ in nums]

    def step(self, node: Node, inp: Batch, out: Batch | dict[str, Batch], errors: ErrorList) -> None:
        now = self.clock()
        p = node.index
        failed = {n: e for n, _, e in errors} if errors else None
        in_nums, in_texts, in_tags = inp.nums, inp.texts, inp.tags
        size = len(in_nums)
        routed = out if isinstance(out, dict) else None
        # Steps that keep every line in place (line_counter, tag_extractor, ...)
        # return the same nums list: output positions are input positions.
        same = routed is None and out.nums is in_nums  # type: ignore[union-attr]
        for k, n in enumerate(self.nums):
            lo = bisect_left(in_nums, n)
            if lo == size or in_nums[lo] != n:
                continue
            hi = lo + 1 if lo + 1 == size or in_nums[lo + 1] != n else bisect_right(in_nums, n, lo)
            status = "drop"
            extra: dict[str, Any] | None = None
            if routed is not None:
                for route, b in routed.items():
                    i = bisect_left(b.nums, n)
                    if i < len(b.nums) and b.nums[i] == n:
                        status = "route:" + route
                        break
            else:
                olo, ohi = (lo, hi) if same else _span(out, n)  # type: ignore[arg-type]
                if olo < ohi:
                    status = "emit"
                    out_texts, out_tags = out.texts, out.tags  # type: ignore[union-attr]
                    if ohi - olo == 1 and hi - lo == 1:
                        if out_texts[olo] is not in_texts[lo] and out_texts[olo] != in_texts[lo]:
                            extra = {"text": out_texts[olo]}
                    elif out_texts[olo:ohi] != in_texts[lo:hi]:
                        extra = {"texts": out_texts[olo:ohi]}
                    if out_tags is not None:
                        tg = out_tags[olo]
                        if in_tags is None or (tg is not in_tags[lo] and tg != in_tags[lo]):
                            extra = dict(extra or {}, tags=list(tg))
            if hi - lo > 1:
                extra = dict(extra or {}, copies=hi - lo)
            if failed is not None and n in failed:
                exc = failed[n]
                status = "error"
                extra = dict(extra or {}, error=f"{type(exc).__name__}: {exc}")
            self.paths[k].append((p, status, now, extra))

    def finish(self, out: Batch) -> list[CompactTrace]:
        result = []
        for n, original, path in zip(self.nums, self.original, self.paths):
            lo, hi = _span(out, n)
            result.append((n, original, path, out.texts[lo:hi]))
        return result


def _span(b: Batch, n: int) -> tuple[int, int]:
    return bisect_left(b.nums, n), bisect_right(b.nums, n)
