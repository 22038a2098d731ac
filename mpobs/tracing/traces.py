"""Per-line traces: which lines are sampled, and what each step did to them."""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

from mpobs.pipeline.batch import Batch
from mpobs.pipeline.dag import Node
from mpobs.pipeline.processors import ErrorList

_GOLDEN = 2654435761  # Knuth's multiplicative hash
_MASK = 0xFFFFFFFF


def sampled(first: int, count: int, rate: float) -> list[int]:
    """The line numbers in ``first .. first+count-1`` that are traced at ``rate``.

    A pure function of the line number (``is_sampled``), so the same lines are traced
    whatever the worker count or task boundaries. Without numpy: from one sampled line
    it jumps straight to the next (``_Jumps``), so the work is per sampled line, not per
    line: about 60 us for a 14,000-line task at 0.01 (numpy's vectorized pass took 25 us,
    but importing numpy costs every worker 60 ms). Very low rates, whose jumps are too
    long to tabulate, use numpy.
    """
    if rate >= 1.0:
        return list(range(first, first + count))
    if count <= 0:
        return []
    jumps = _jumps(rate)
    if jumps is None:
        return _sampled_numpy(first, count, rate)
    end, threshold = first + count, jumps.threshold
    n = first
    while n < end and ((n * _GOLDEN) & _MASK) >= threshold:  # the first sampled line: within ~1/rate lines
        n += 1
    out = []
    nxt = jumps.next
    while n < end:
        out.append(n)
        n += nxt((n * _GOLDEN) & _MASK)
    return out


class _Jumps:
    """From a sampled line, the distance to the next one, found among a few candidate steps.

    Line ``n`` is sampled when ``h(n) = n * G mod 2**32`` is below ``threshold``; from
    ``h(n) = x``, ``k`` lines later ``h = x + d(k) mod 2**32`` with ``d(k) = k * G mod
    2**32``. So ``n + k`` is sampled exactly when ``d(k) < threshold - x`` or
    ``d(k) >= 2**32 - x``: only steps with ``d(k)`` in those two bands can ever land,
    and they are tabulated in increasing ``k`` until, together, they land from every
    ``x`` below the threshold. The first candidate that lands from ``x`` is the next
    sampled line: exact, not an approximation.
    """

    def __init__(self, threshold: int, steps: list[tuple[int, int]]) -> None:
        self.threshold = threshold
        self.steps = steps  # (k, d(k))

    def next(self, x: int) -> int:
        low, high = self.threshold - x, 0x100000000 - x
        for k, d in self.steps:
            if d < low or d >= high:
                return k
        raise AssertionError("unreachable: the steps cover every x below the threshold")


_JUMPS: dict[float, _Jumps | None] = {}
#: Below this rate the search for a task's first sampled line (~1/rate lines) costs more than numpy.
_MIN_RATE = 0.001
#: Steps searched for a table; a rate whose table needs more uses numpy.
_MAX_STEP = 100_000


def _jumps(rate: float) -> _Jumps | None:
    if rate not in _JUMPS:
        threshold = int(rate * 2**32)
        steps: list[tuple[int, int]] = []
        covered_low, covered_high = 0, threshold  # steps so far land from x < covered_low and x >= covered_high
        k = 0
        while rate >= _MIN_RATE and covered_low < covered_high and k < _MAX_STEP:
            k += 1
            d = (k * _GOLDEN) & _MASK
            low, high = d < threshold, d >= 0x100000000 - threshold
            if low:
                covered_low = max(covered_low, threshold - d)
            if high:
                covered_high = min(covered_high, 0x100000000 - d)
            if low or high:
                steps.append((k, d))
        _JUMPS[rate] = _Jumps(threshold, steps) if rate >= _MIN_RATE and covered_low >= covered_high else None
    return _JUMPS[rate]


def _sampled_numpy(first: int, count: int, rate: float) -> list[int]:
    import numpy as np

    nums = np.arange(first, first + count, dtype=np.uint64)
    h = (nums * np.uint64(_GOLDEN)) & np.uint64(_MASK)
    return nums[h < np.uint64(int(rate * 2**32))].tolist()


def is_sampled(num: int, rate: float) -> bool:
    """``sampled`` for one line (tests, and readers of a saved trace)."""
    return rate >= 1.0 or ((num * _GOLDEN) & _MASK) < int(rate * 2**32)


#: One step on the wire: (processor position, status, timestamp, extra fields or None).
Step = tuple[int, str, float, "dict[str, Any] | None"]
#: One trace on the wire: (line number, original text, steps, outputs, input number, line
#: in that input). Tuples pickle several times faster than the dicts a reader wants;
#: ``expand`` makes those.
CompactTrace = tuple[int, str, list[Step], list[str], int, int]


def expand(trace: CompactTrace, inputs: Sequence[tuple[str, str]], ids: list[str]) -> dict[str, Any]:
    """The trace as readers see it (``--save-traces``, ``/trace``, saved metrics).

    ``inputs``: per input, (the name records show, the name as given).
    """
    n, original, steps, outputs, k, file_line = trace
    name, given = inputs[k]
    path = []
    for p, status, ts, extra in steps:
        entry = {"processor": ids[p], "status": status, "timestamp": ts}
        if extra:
            entry.update(extra)
        path.append(entry)
    return {
        "line_id": f"{name}:{file_line}",
        "line_number": n,
        "file": given,
        "file_line": file_line,
        "original_content": original,
        "path": path,
        "outputs": outputs,
    }


class BatchTrace:
    """Collects the path of the sampled lines of one batch as the DAG runs it.

    Work is proportional to the traced lines, not to the batch; records are
    compact tuples (see ``expand``). Where each traced line sits in a step's
    output is kept, so the next step that takes that output finds it without a
    search; only merged (fan-in) and routed batches are searched (binary search
    in their sorted line numbers).
    """

    def __init__(self, nums: list[int], batch: Batch, clock: Any = time.time) -> None:
        """``nums``: the traced lines of ``batch``, the batch a task made of consecutive input lines."""
        self.clock = clock
        first = batch.nums[0] if batch.nums else 0
        texts = batch.texts
        self.nums = nums
        self.original = [texts[n - first] for n in nums]
        self.paths: list[list[Step]] = [[] for _ in nums]
        # id(batch) -> (batch, [(traced index, lo, hi)]): the traced lines a batch holds, at lo:hi.
        # The batch is kept too, so its id cannot be reused by another batch meanwhile.
        self._where: dict[int, tuple[Batch, list[tuple[int, int, int]]]] = {
            id(batch): (batch, [(k, n - first, n - first + 1) for k, n in enumerate(nums)])
        }

    @classmethod
    def of_all(cls, batch: Batch) -> BatchTrace:
        """Traces every line of ``batch``, whatever its numbers (a replay of a saved batch: mpobs.tracing.tracefile)."""
        self = cls.__new__(cls)
        self.clock = time.time
        self.nums, self.original = batch.nums, batch.texts
        self.paths = [[] for _ in batch.nums]
        self._where = {id(batch): (batch, [(k, k, k + 1) for k in range(len(batch.nums))])}
        return self

    def _find(self, b: Batch) -> list[tuple[int, int, int]]:
        known = self._where.get(id(b))
        if known is not None and known[0] is b:
            return known[1]
        found = []
        b_nums = b.nums
        for k, n in enumerate(self.nums):
            lo, hi = bisect_left(b_nums, n), bisect_right(b_nums, n)
            if lo < hi:
                found.append((k, lo, hi))
        return found

    def step(self, node: Node, inp: Batch, out: Batch | dict[str, Batch], errors: ErrorList) -> None:
        failed = {n: describe(e) for n, _, e in errors} if errors else None
        self.record(node.index, inp, out, failed, self.clock())

    def record(
        self, p: int, inp: Batch, out: Batch | dict[str, Batch], failed: dict[int, str] | None, now: float
    ) -> None:
        """One step of processor ``p``; ``failed``: the lines it failed on, with ``describe`` of their error."""
        in_texts, in_tags = inp.texts, inp.tags
        nums, paths = self.nums, self.paths
        here = self._find(inp)
        if isinstance(out, dict):  # a router: each line goes to one route, or is dropped
            for k, lo, hi in here:
                n = nums[k]
                status = "drop"
                for route, b in out.items():
                    i = bisect_left(b.nums, n)
                    if i < len(b.nums) and b.nums[i] == n:
                        status = "route:" + route
                        break
                routed: dict[str, Any] | None = {"copies": hi - lo} if hi - lo > 1 else None
                if failed is not None and n in failed:
                    status, routed = "error", {**(routed or {}), "error": failed[n]}
                paths[k].append((p, status, now, routed))
            return
        # Steps that keep every line in place (line_counter, tag_extractor, ...)
        # return the same nums list: output positions are input positions.
        same = out.nums is inp.nums
        out_nums, out_texts, out_tags = out.nums, out.texts, out.tags
        kept = []
        for k, lo, hi in here:
            n = nums[k]
            olo, ohi = (lo, hi) if same else (bisect_left(out_nums, n), bisect_right(out_nums, n))
            status = "drop"
            extra: dict[str, Any] | None = None
            if olo < ohi:
                status = "emit"
                kept.append((k, olo, ohi))
                if ohi - olo == 1 and hi - lo == 1:
                    if out_texts[olo] is not in_texts[lo] and out_texts[olo] != in_texts[lo]:
                        extra = {"text": out_texts[olo]}
                elif out_texts[olo:ohi] != in_texts[lo:hi]:
                    extra = {"texts": out_texts[olo:ohi]}
                if out_tags is not None:
                    tg = out_tags[olo]
                    if in_tags is None or (tg is not in_tags[lo] and tg != in_tags[lo]):
                        extra = {**(extra or {}), "tags": list(tg)}
            if hi - lo > 1:
                extra = {**(extra or {}), "copies": hi - lo}
            if failed is not None and n in failed:
                status, extra = "error", {**(extra or {}), "error": failed[n]}
            paths[k].append((p, status, now, extra))
        self._where[id(out)] = (out, kept)

    def finish(self, out: Batch, input_k: int = 0, offset: int = 0) -> list[CompactTrace]:
        """The batch's traces; its lines are of input ``input_k``, line ``n - offset`` there."""
        at = {k: (lo, hi) for k, lo, hi in self._find(out)}
        texts = out.texts
        result = []
        for k, (n, original, path) in enumerate(zip(self.nums, self.original, self.paths)):
            lo, hi = at.get(k, (0, 0))
            result.append((n, original, path, texts[lo:hi], input_k, n - offset))
        return result


def describe(exc: BaseException) -> str:
    """An error as a trace step shows it."""
    return f"{type(exc).__name__}: {exc}"
