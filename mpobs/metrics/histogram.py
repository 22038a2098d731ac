"""Latency histograms: fixed log-scale buckets, counted exactly like every other count.

A duration of ``ns`` nanoseconds falls in bucket ``k`` when ``ns <= LE_NS[k]``
(and above ``LE_NS[k-1]``); the bounds double from 1.024 µs (2**10 ns) to about
34 s (2**35 ns), and the last bucket (+Inf) takes the rest. Powers of two make the
bucket a table lookup on ``(ns - 1).bit_length()``: about 60 ns a call, cheap
enough to time every call of a user function. The buckets are columns of the
stats segment's count vector (``mpobs.metrics.segment``), so a lost task never counts
twice in them either, and they merge across workers, tasks and machines exactly.

``quantile`` estimates a quantile from the buckets as Prometheus's
``histogram_quantile`` does: linearly within the bucket it falls in, the +Inf
bucket answering with the highest finite bound.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Buckets per histogram, +Inf included.
BUCKETS = 27
_FIRST_BITS = 10
#: Upper bounds (inclusive, in ns) of every bucket but the last (+Inf).
LE_NS = tuple(1 << (_FIRST_BITS + k) for k in range(BUCKETS - 1))
#: The same in seconds, as /metrics labels them (``le``); the last is "+Inf".
LE_LABELS = (*(repr(ns / 1e9) for ns in LE_NS), "+Inf")
#: ``(ns - 1).bit_length()`` -> bucket (``bucket_of``), for any duration an int64 holds.
BUCKET_BY_BITS = tuple(min(max(bits - _FIRST_BITS, 0), BUCKETS - 1) for bits in range(65))


def bucket_of(ns: int) -> int:
    """The bucket of a duration (callers in a hot loop index ``BUCKET_BY_BITS`` themselves)."""
    return BUCKET_BY_BITS[(ns - 1).bit_length()] if ns > 0 else 0


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in seconds of a histogram's bucket counts (not cumulative); None if empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for k, n in enumerate(counts):
        if n and seen + n >= rank:
            if k == BUCKETS - 1:
                return LE_NS[-1] / 1e9  # +Inf: the highest finite bound, as Prometheus answers
            lo = LE_NS[k - 1] if k > 0 else 0
            return (lo + (LE_NS[k] - lo) * (rank - seen) / n) / 1e9
        seen += n
    return LE_NS[-1] / 1e9


def summary(counts: Sequence[int], sum_ns: int) -> dict[str, object]:
    """What /stats shows of a histogram: count, sum, p50/p90/p99 (s), and its non-empty buckets by bound."""
    return {
        "count": sum(counts),
        "sum_s": round(sum_ns / 1e9, 9),
        "p50_s": _round(quantile(counts, 0.5)),
        "p90_s": _round(quantile(counts, 0.9)),
        "p99_s": _round(quantile(counts, 0.99)),
        "buckets": {LE_LABELS[k]: n for k, n in enumerate(counts) if n},
    }


def _round(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.6g}")
