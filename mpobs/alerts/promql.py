"""PromQL evaluated over the run's own series: a small store of samples and an instant-query evaluator.

The alert rules of ``--alerts`` are evaluated here, without a Prometheus server, with
Prometheus 2.x's semantics so a rule gives the same values here and in a Prometheus
scraping ``/metrics`` (tests/test_alert_prometheus.py compares the two over the same
samples):

- an instant selector takes each series' latest sample at most ``LOOKBACK_MS`` old, none
  if the series went stale (it left the scrape); a range selector ``x[r]`` takes the
  samples in ``[t - r, t]``;
- ``rate``/``increase``/``delta`` extrapolate to the range's edges like Prometheus's
  ``extrapolatedRate`` (counter resets included), ``irate`` takes the last two samples;
- ``sum``/``avg``/``max``/``min by (...)``; arithmetic, comparisons (filtering, or 0/1 with
  ``bool``) and ``and``/``or``/``unless`` between vectors (one-to-one, ``on``/``ignoring``)
  and scalars; ``histogram_quantile`` as Prometheus's bucketQuantile; ``absent``.

What is outside this set is refused when the rule file is read (``mpobs.alerts.rules``).
The samples are a ``mpobs.alerts.store.SeriesStore``.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from mpobs.alerts.store import NAME, Labels, SeriesStore, drop_name, sample_time

#: How far back an instant selector looks for a sample (Prometheus's --query.lookback-delta default).
LOOKBACK_MS = 5 * 60 * 1000
Vector = list[tuple[Labels, float]]
Value = float | Vector  # a scalar or an instant vector


class EvalError(Exception):
    """An expression that cannot be evaluated over these samples (many-to-many matching, say)."""


class Evaluator:
    """Instant queries over a SeriesStore: ``eval(tree, t_ms)`` gives a scalar or a vector."""

    def __init__(self, store: SeriesStore) -> None:
        self.store = store

    def query(self, expr: str, t_ms: int) -> Value:
        import promql_parser

        return self.eval(promql_parser.parse(expr), t_ms)

    def eval(self, node: Any, t: int) -> Value:
        import promql_parser as p

        if isinstance(node, p.NumberLiteral):
            return float(node.val)
        if isinstance(node, p.ParenExpr):
            return self.eval(node.expr, t)
        if isinstance(node, p.UnaryExpr):
            got = self.eval(node.expr, t)
            return -got if isinstance(got, float) else [(drop_name(k), -v) for k, v in got]
        if isinstance(node, p.VectorSelector):
            return self._instant(node, t)
        if isinstance(node, p.Call):
            return self._call(node, t)
        if isinstance(node, p.AggregateExpr):
            return _aggregate(str(node.op), self._vector(node.expr, t), node.modifier)
        if isinstance(node, p.BinaryExpr):
            return self._binary(node, t)
        raise EvalError(f"cannot evaluate {type(node).__name__}")

    def _vector(self, node: Any, t: int) -> Vector:
        got = self.eval(node, t)
        if isinstance(got, float):
            raise EvalError("expected an instant vector, got a scalar")
        return got

    def _instant(self, vs: Any, t: int) -> Vector:
        out: Vector = []
        for key, points in self.store.select(_matchers(vs)):
            i = bisect.bisect_right(points, t, key=sample_time) - 1
            value = points[i][1] if i >= 0 and points[i][0] >= t - LOOKBACK_MS else None
            if value is not None:
                out.append((key, value))
        return sorted(out)

    def _range(self, ms: Any, t: int) -> tuple[int, list[tuple[Labels, list[tuple[int, float]]]]]:
        range_ms = round(ms.range.total_seconds() * 1000)
        out: list[tuple[Labels, list[tuple[int, float]]]] = []
        for key, points in self.store.select(_matchers(ms.vector_selector)):
            got = [(at, v) for at, v in self.store.between(points, t - range_ms, t) if v is not None]
            if got:
                out.append((key, got))
        return range_ms, sorted(out)

    def _call(self, call: Any, t: int) -> Vector:
        fn = call.func.name
        if fn in ("rate", "increase", "delta", "irate"):
            range_ms, matrix = self._range(call.args[0], t)
            out: Vector = []
            for key, points in matrix:
                value = _irate(points) if fn == "irate" else _extrapolated(points, t, range_ms, fn)
                if value is not None:
                    out.append((drop_name(key), value))
            return out
        if fn == "histogram_quantile":
            q = self.eval(call.args[0], t)
            if not isinstance(q, float):
                raise EvalError("histogram_quantile takes a scalar quantile")
            return _histogram_quantile(q, self._vector(call.args[1], t))
        if fn == "absent":
            if self._vector(call.args[0], t):
                return []
            return [(_absent_labels(call.args[0]), 1.0)]
        raise EvalError(f"the function {fn}() is not supported")

    def _binary(self, node: Any, t: int) -> Value:
        op, mod = str(node.op), node.modifier
        lhs, rhs = self.eval(node.lhs, t), self.eval(node.rhs, t)
        want_bool = mod is not None and mod.return_bool
        if isinstance(lhs, float) and isinstance(rhs, float):
            value, keep = _elem(op, lhs, rhs)
            if op in _COMPARE and not want_bool:
                raise EvalError("comparisons between scalars need bool")
            return float(keep) if op in _COMPARE else value
        if isinstance(lhs, float) or isinstance(rhs, float):
            return _vector_scalar(op, lhs, rhs, want_bool)
        matching = mod.matching if mod is not None else None
        on = matching is not None and str(matching.type).endswith("Include")
        names = tuple(matching.labels) if matching is not None else ()
        if op in ("and", "or", "unless"):
            return _set_op(op, lhs, rhs, on, names)
        return _vector_vector(op, lhs, rhs, on, names, want_bool)


_COMPARE = frozenset({"==", "!=", ">", "<", ">=", "<="})


def _matchers(vs: Any) -> list[tuple[str, str, str]]:
    ops = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
    out = [(m.name, ops[str(m.op).rsplit(".", 1)[-1]], m.value) for m in vs.matchers.matchers]
    if vs.name is not None:
        out.append((NAME, "=", vs.name))
    return out


def _extrapolated(points: list[tuple[int, float]], t: int, range_ms: int, fn: str) -> float | None:
    """Prometheus 2.x's extrapolatedRate, for rate (per second), increase and delta (no counter resets)."""
    if len(points) < 2:
        return None
    counter = fn != "delta"
    first_t, first_v = points[0]
    last_t, last_v = points[-1]
    result = last_v - first_v
    if counter:
        previous = 0.0
        for _, v in points:
            if v < previous:
                result += previous
            previous = v
    to_start = (first_t - (t - range_ms)) / 1000
    to_end = (t - last_t) / 1000
    sampled = (last_t - first_t) / 1000
    average = sampled / (len(points) - 1)
    if counter and result > 0 and first_v >= 0:
        to_zero = sampled * (first_v / result)
        if to_zero < to_start:
            to_start = to_zero
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    result = result * (interval / sampled)
    return result / (range_ms / 1000) if fn == "rate" else result


def _irate(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 2:
        return None
    (prev_t, prev_v), (last_t, last_v) = points[-2], points[-1]
    if last_t == prev_t:
        return None
    value = last_v if last_v < prev_v else last_v - prev_v
    return value / ((last_t - prev_t) / 1000)


def _aggregate(op: str, vector: Vector, modifier: Any) -> Vector:
    by = tuple(modifier.labels) if modifier is not None else ()
    groups: dict[Labels, list[float]] = {}
    for key, value in vector:
        group = tuple(kv for kv in key if kv[0] in by)
        groups.setdefault(group, []).append(value)
    out: Vector = []
    for group, values in groups.items():
        if op == "sum":
            total = 0.0
            for v in values:
                total += v
            out.append((group, total))
        elif op == "avg":  # Prometheus 2.x's running mean, for the same float result
            mean = values[0]
            for n, v in enumerate(values[1:], start=2):
                mean += v / n - mean / n
            out.append((group, mean))
        elif op == "max":
            out.append((group, _nan_aware(values, max)))
        elif op == "min":
            out.append((group, _nan_aware(values, min)))
        else:
            raise EvalError(f"the aggregation {op} is not supported")
    return sorted(out)


def _nan_aware(values: list[float], pick: Any) -> float:
    numbers = [v for v in values if not math.isnan(v)]
    return pick(numbers) if numbers else math.nan


def _elem(op: str, a: float, b: float) -> tuple[float, bool]:
    """The value of ``a op b``; for a comparison, ``a`` and whether it holds."""
    if op == "+":
        return a + b, True
    if op == "-":
        return a - b, True
    if op == "*":
        return a * b, True
    if op == "/":
        return (
            a / b
            if b != 0
            else (math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1, b))
        ), True
    if op == "%":
        return (math.fmod(a, b) if b != 0 else math.nan), True
    if op == "^":
        try:
            return math.pow(a, b), True
        except (OverflowError, ValueError):
            return math.nan, True
    holds = {"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]
    return a, holds


def _vector_scalar(op: str, lhs: Value, rhs: Value, want_bool: bool) -> Vector:
    swap = isinstance(lhs, float)
    vector: Vector = rhs if swap else lhs  # type: ignore[assignment]
    scalar: float = lhs if swap else rhs  # type: ignore[assignment]
    out: Vector = []
    for key, v in vector:
        a, b = (scalar, v) if swap else (v, scalar)
        value, keep = _elem(op, a, b)
        if op in _COMPARE:
            if want_bool:
                value, keep = float(keep), True
            elif swap:
                value = v  # the vector's value, even on the right
        if keep:
            out.append((drop_name(key) if op not in _COMPARE or want_bool else key, value))
    return out


def _signature(key: Labels, on: bool, names: tuple[str, ...]) -> Labels:
    if on:
        return tuple(kv for kv in key if kv[0] in names)
    return tuple(kv for kv in key if kv[0] != NAME and kv[0] not in names)


def _vector_vector(op: str, lhs: Vector, rhs: Vector, on: bool, names: tuple[str, ...], want_bool: bool) -> Vector:
    right: dict[Labels, tuple[Labels, float]] = {}
    for key, v in rhs:
        sig = _signature(key, on, names)
        if sig in right:
            raise EvalError("found duplicate series for the match group on the right hand-side of the operation")
        right[sig] = (key, v)
    out: Vector = []
    matched: set[Labels] = set()
    for key, v in lhs:
        sig = _signature(key, on, names)
        if sig not in right:
            continue
        if sig in matched:
            raise EvalError("many-to-many matching not allowed: matching labels must be unique on one side")
        matched.add(sig)
        value, keep = _elem(op, v, right[sig][1])
        if op in _COMPARE and want_bool:
            value, keep = float(keep), True
        if not keep:
            continue
        result = key if op in _COMPARE and not want_bool else drop_name(key)
        if on:
            result = tuple(kv for kv in result if kv[0] in names)
        else:
            result = tuple(kv for kv in result if kv[0] not in names)
        out.append((result, value))
    return out


def _set_op(op: str, lhs: Vector, rhs: Vector, on: bool, names: tuple[str, ...]) -> Vector:
    right = {_signature(k, on, names) for k, _ in rhs}
    if op == "and":
        return [(k, v) for k, v in lhs if _signature(k, on, names) in right]
    if op == "unless":
        return [(k, v) for k, v in lhs if _signature(k, on, names) not in right]
    left = {_signature(k, on, names) for k, _ in lhs}
    return list(lhs) + [(k, v) for k, v in rhs if _signature(k, on, names) not in left]


def _histogram_quantile(q: float, vector: Vector) -> Vector:
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for key, v in vector:
        got = dict(key)
        if "le" not in got:
            continue
        try:
            upper = float(got["le"])
        except ValueError:
            continue
        group = tuple(kv for kv in key if kv[0] not in (NAME, "le"))
        groups.setdefault(group, []).append((upper, v))
    return sorted((group, _bucket_quantile(q, buckets)) for group, buckets in groups.items())


def _bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's bucketQuantile: linear interpolation within the bucket the rank falls in."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    buckets.sort(key=lambda b: b[0])
    if not math.isinf(buckets[-1][0]):
        return math.nan
    merged: list[list[float]] = []
    for upper, count in buckets:  # the same bound twice: one bucket
        if merged and merged[-1][0] == upper:
            merged[-1][1] += count
        else:
            merged.append([upper, count])
    top = -math.inf
    for bucket in merged:  # counts must not fall (a scrape between two increments)
        if bucket[1] > top:
            top = bucket[1]
        elif bucket[1] < top:
            bucket[1] = top
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(merged) - 1) if merged[i][1] >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * (rank / count)


def _absent_labels(node: Any) -> Labels:
    """The labels ``absent(x{a="b"})`` answers with: its equality matchers (not the name)."""
    import promql_parser as p

    vs = node.vector_selector if isinstance(node, p.MatrixSelector) else node
    if not isinstance(vs, p.VectorSelector):
        return ()
    equal = [(m.name, m.value) for m in vs.matchers.matchers if str(m.op) == "MatchOp.Equal" and m.name != NAME]
    counts: dict[str, int] = {}
    for name, _ in equal:
        counts[name] = counts.get(name, 0) + 1
    return tuple(sorted((n, v) for n, v in equal if counts[n] == 1))
