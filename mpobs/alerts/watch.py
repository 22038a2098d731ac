"""Alert rules evaluated during a run: pending, firing and resolved, as Prometheus's rule manager does.

``AlertWatch`` is what the coordinator holds when ``--alerts`` is given. On each tick it
samples the run's series (``mpobs.metrics.series``, from the live stats document) into a
``promql.SeriesStore`` and evaluates the rules that are due, with Prometheus's semantics:
a new result element is *pending* from that evaluation, *firing* once it has been for
``for``; an element gone from the result resolves a firing alert (after ``keep_firing_for``)
and drops a pending one. Each firing or resolution is one line on stderr and an event in
the document that ``/stats`` (``alerts``), ``/alerts``, ``ALERTS`` in ``/metrics`` and
``--save-metrics`` show; ``--alertmanager`` posts them (``mpobs.alerts.alertmanager``);
``--fail-on-alert`` names the alerts that end the run (exit 4). At the run's end what
still fires stays firing, as a Prometheus that goes away leaves it (``finish``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from mpobs.alerts.promql import LOOKBACK_MS, EvalError, Evaluator
from mpobs.alerts.rules import AlertRule
from mpobs.alerts.store import Labels, SeriesStore, drop_name
from mpobs.defaults import ALERTS_INTERVAL
from mpobs.metrics.series import samples

#: Resolved alerts are kept (and sent to Alertmanager) this long, as Prometheus does.
RESOLVED_RETENTION_S = 15 * 60
#: Firing alerts are sent to Alertmanager again this often (Prometheus's --rules.alert.resend-delay).
RESEND_DELAY_S = 60.0
#: Firing and resolved events kept for /stats and --save-metrics.
KEEP_EVENTS = 200
_TEMPLATE = re.compile(r"\{\{\s*\$(value|labels(?:\.([A-Za-z_][A-Za-z0-9_]*))?)\s*\}\}")


@dataclass(frozen=True)
class AlertOptions:
    """``--alerts`` and the flags that go with it; the rules are read and checked before the run."""

    rules: tuple[AlertRule, ...]
    interval_s: float = ALERTS_INTERVAL
    alertmanager: str | None = None  # base URL; alerts go to its /api/v2/alerts
    fail_on: tuple[str, ...] = ()  # alert names, or "any"
    generator_url: str = ""  # where an Alertmanager's user can look (the dashboard, when there is one)


@dataclass
class Alert:
    labels: dict[str, str]
    annotations: dict[str, str]
    value: float
    active_at: float  # seconds since the epoch
    state: str = "pending"
    fired_at: float = 0.0
    resolved_at: float = 0.0
    keep_since: float = 0.0
    sent_at: float = 0.0

    def doc(self) -> dict[str, Any]:
        """One alert as Prometheus's /api/v1/alerts shows it."""
        return {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "state": self.state,
            "activeAt": rfc3339(self.active_at),
            "value": go_e(self.value),
        }


@dataclass
class RuleState:
    rule: AlertRule
    tree: Any
    interval_s: float
    next_at: float = 0.0
    active: dict[Labels, Alert] = field(default_factory=dict)
    last_error: str | None = None
    evaluations: int = 0


class AlertWatch:
    """Evaluates ``opts.rules`` every interval over the run's own series; see the module docstring."""

    def __init__(self, opts: AlertOptions, say: Callable[[str], None], clock: Callable[[], float] = time.time) -> None:
        import promql_parser

        self.opts, self.say, self.clock = opts, say, clock
        self.rules = [RuleState(r, promql_parser.parse(r.expr), r.interval_s or opts.interval_s) for r in opts.rules]
        self.names = frozenset().union(*(r.metrics for r in opts.rules)) if opts.rules else frozenset()
        longest = max((_longest_range(r.tree) for r in self.rules), default=0)
        self.store = SeriesStore(max(longest, LOOKBACK_MS))  # queries are at the newest scrape
        self.evaluator = Evaluator(self.store)
        self.events: list[dict[str, Any]] = []
        self.busy_s = 0.0  # CPU time spent evaluating, the run's stats document included (bench reads it)
        self.failed: str | None = None  # set once an alert named by --fail-on-alert fires
        self.ended_at: float | None = None  # when ``finish`` made the last evaluation
        self._last_tick = -1.0  # when ``tick`` last evaluated (and posted)
        # How long a posted firing alert is valid without a new post, as Prometheus's ValidUntil.
        self.valid_for = 4 * max(RESEND_DELAY_S, opts.interval_s)
        self.notifier = None
        if opts.alertmanager:
            from mpobs.alerts.alertmanager import Notifier

            self.notifier = Notifier(opts.alertmanager)

    def due(self) -> bool:
        return self.clock() >= min((r.next_at for r in self.rules), default=math.inf)

    def tick(self, stats: Callable[[], dict[str, Any]], force: bool = False) -> bool:
        """Evaluate the rules that are due (all of them with ``force``); True if anything was evaluated."""
        now = self.clock()
        due = [r for r in self.rules if force or now >= r.next_at]
        if not due:
            self._notifier_news()
            return False
        started = time.thread_time()
        self._last_tick = now
        t_ms = int(now * 1000)
        self.store.scrape(t_ms, samples(stats(), self.names | {"ALERTS"}))
        for r in due:
            self._evaluate(r, now, t_ms)
            # On the group's own beat, as Prometheus keeps it, not from when the loop got to it
            # (0.1 s at most later): a 0.15 s interval would drift to 0.2 s. Late by a whole
            # interval or more (a stopped process), it starts again from now.
            beat = r.next_at + r.interval_s
            r.next_at = beat if beat > now else now + r.interval_s
        self._send(now)
        self.busy_s += time.thread_time() - started
        return True

    def _evaluate(self, r: RuleState, now: float, t_ms: int) -> None:
        r.evaluations += 1
        try:
            got = self.evaluator.eval(r.tree, t_ms)
        except (EvalError, ValueError, ArithmeticError, re.error) as err:
            if str(err) != r.last_error:
                self.say(f"warning: alert {r.rule.name}: cannot evaluate: {err}")
            r.last_error = str(err)
            return
        r.last_error = None
        vector = [] if isinstance(got, float) else got
        seen: dict[Labels, Alert] = {}
        for key, value in vector:
            element = dict(drop_name(key))
            labels = {
                **element,
                **{k: expand(v, element, value) for k, v in r.rule.labels.items()},
                "alertname": r.rule.name,
            }
            annotations = {k: expand(v, element, value) for k, v in r.rule.annotations.items()}
            fp = tuple(sorted(labels.items()))
            seen[fp] = Alert(labels, annotations, value, now)
        for fp, new in seen.items():
            old = r.active.get(fp)
            if old is not None and old.state != "inactive":
                old.value, old.annotations, old.keep_since = new.value, new.annotations, 0.0
            else:
                r.active[fp] = new
        for fp, alert in list(r.active.items()):
            if fp not in seen:
                keep = False
                if alert.state == "firing" and r.rule.keep_firing_for_s > 0:
                    alert.keep_since = alert.keep_since or now
                    keep = now - alert.keep_since < r.rule.keep_firing_for_s
                if alert.state == "pending" or (alert.resolved_at and now - alert.resolved_at > RESOLVED_RETENTION_S):
                    del r.active[fp]
                if alert.state == "firing" and not keep:
                    alert.state, alert.resolved_at = "inactive", now
                    self._event("resolved", alert, now)
                if not keep:
                    continue
            if alert.state == "pending" and now - alert.active_at >= r.rule.for_s:
                alert.state, alert.fired_at = "firing", now
                self._event("firing", alert, now)

    def _event(self, what: str, alert: Alert, now: float) -> None:
        name = alert.labels["alertname"]
        shown = ",".join(f'{k}="{v}"' for k, v in sorted(alert.labels.items()) if k != "alertname")
        about = alert.annotations.get("summary") or alert.annotations.get("description") or ""
        if what == "firing":
            line = f"alert {name}{{{shown}}} firing (value {go_e(alert.value)})" + (f": {about}" if about else "")
        elif what == "still_firing":
            line = f"alert {name}{{{shown}}} still firing when the run ended ({now - alert.fired_at:.0f} s firing)"
            if self.notifier is not None:
                line += f"; Alertmanager resolves it at {rfc3339(now + self.valid_for)} unless it fires again"
        else:
            line = f"alert {name}{{{shown}}} resolved after {now - alert.fired_at:.0f} s firing"
        self.say(line)
        self.events.append(
            {
                "event": what,
                "at": rfc3339(now),
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "value": alert.value,
            }
        )
        del self.events[:-KEEP_EVENTS]
        if what == "firing" and self.failed is None and ("any" in self.opts.fail_on or name in self.opts.fail_on):
            self.failed = f"alert {name} fired" + (f": {about}" if about else "") + " (--fail-on-alert)"

    def _send(self, now: float) -> None:
        if self.notifier is None:
            return
        batch = []
        for r in self.rules:
            for alert in r.active.values():
                if alert.state == "pending":
                    continue
                if alert.resolved_at > alert.sent_at or alert.sent_at + RESEND_DELAY_S < now:
                    alert.sent_at = now
                    ends = alert.resolved_at if alert.state == "inactive" else now + self.valid_for
                    batch.append(self._posted(alert, ends))
        if batch:
            self.notifier.send(batch)
        self._notifier_news()

    def _posted(self, alert: Alert, ends_at: float) -> dict[str, Any]:
        return {
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "startsAt": rfc3339(alert.fired_at),
            "endsAt": rfc3339(ends_at),
            "generatorURL": self.opts.generator_url,
        }

    def _notifier_news(self) -> None:
        if self.notifier is not None:
            for line in self.notifier.news():
                self.say(line)

    def finish(self, stats: Callable[[], dict[str, Any]]) -> None:
        """The run is over: a last evaluation, then nothing evaluates these rules any more.

        As when a Prometheus goes away: what still fires is not resolved (its condition was
        last seen holding). It is posted once more as firing, with ``endsAt`` ``valid_for``
        from now, and Alertmanager resolves it when that passes; the posts get
        ``Notifier.close``'s bounded time to be acknowledged. Pending alerts never fired: dropped.
        """
        self.tick(stats, force=True)
        now = self.clock()
        self.ended_at = now
        ends = now + self.valid_for
        batch = []
        for r in self.rules:
            for fp, alert in list(r.active.items()):
                if alert.state == "pending":
                    del r.active[fp]
                elif alert.state == "firing":
                    if alert.sent_at != self._last_tick:  # not posted by that last evaluation already
                        alert.sent_at = now
                        batch.append(self._posted(alert, ends))
                    self._event("still_firing", alert, now)
        if self.notifier is not None:
            if batch:
                self.notifier.send(batch)
            self.notifier.close()
            self._notifier_news()

    def doc(self) -> dict[str, Any]:
        """The ``alerts`` part of the stats document: active alerts as /api/v1/alerts, rules, events."""
        active = [a.doc() for r in self.rules for a in r.active.values() if a.state in ("pending", "firing")]
        rules = [
            {
                "name": r.rule.name,
                "group": r.rule.group,
                "expr": r.rule.expr,
                "for_s": r.rule.for_s,
                "interval_s": r.interval_s,
                "evaluations": r.evaluations,
                "error": r.last_error,
                "state": _rule_state(r),
            }
            for r in self.rules
        ]
        out: dict[str, Any] = {
            "alerts": active,
            "rules": rules,
            "events": list(self.events),
            "interval_s": self.opts.interval_s,
            "busy_s": round(self.busy_s, 6),
            "ended_at": rfc3339(self.ended_at) if self.ended_at is not None else None,
        }
        if self.notifier is not None:
            out["alertmanager"] = self.notifier.status()
        return out


def _rule_state(r: RuleState) -> str:
    states = {a.state for a in r.active.values()}
    return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"


def _longest_range(tree: Any) -> int:
    """The longest range selector in an expression, in ms (the store keeps that much)."""
    import promql_parser as p

    longest = 0

    def visit(node: Any) -> None:
        nonlocal longest
        if isinstance(node, p.MatrixSelector):
            longest = max(longest, round(node.range.total_seconds() * 1000))  # as Evaluator._range
        for name in ("expr", "lhs", "rhs"):
            child = getattr(node, name, None)
            if child is not None and not isinstance(child, (str, float)):
                visit(child)
        for arg in getattr(node, "args", None) or []:
            visit(arg)

    visit(tree)
    return longest


def expand(template: str, labels: dict[str, str], value: float) -> str:
    """``{{ $labels.x }}`` and ``{{ $value }}`` filled in as Prometheus's templates print them."""

    def one(m: re.Match[str]) -> str:
        if m.group(1) == "value":
            return go_v(value)
        if m.group(2) is None:
            return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(labels.items())) + "]"
        return labels.get(m.group(2), "")

    return _TEMPLATE.sub(one, template)


def go_v(value: float) -> str:
    """A float as Go's ``%v`` prints it: the shortest digits, an exponent below 1e-4 or from 1e6."""
    special = _special(value, "0")
    if special is not None:
        return special
    digits, exp = _shortest(value)
    if exp < -4 or exp >= 6:
        return _e_form(value, digits, exp)
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def go_e(value: float) -> str:
    """A float as Go's ``strconv.FormatFloat(v, 'e', -1, 64)`` (the value field of /api/v1/alerts)."""
    special = _special(value, "0e+00")
    if special is not None:
        return special
    digits, exp = _shortest(value)
    return _e_form(value, digits, exp)


def _special(value: float, zero: str) -> str | None:
    """NaN, infinities and zero as Go prints them; None for any other number."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return zero if value == 0 else None


def _shortest(value: float) -> tuple[str, int]:
    _sign, digits, exponent = Decimal(repr(abs(value))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    return text, len(digits) + int(exponent) - 1


def _e_form(value: float, digits: str, exp: int) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if value < 0 else ''}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
