"""Alerting rules in Prometheus's rule-file syntax: read, checked, and held to the PromQL mpobs evaluates.

A rule file is what ``promtool check rules`` takes: ``groups[].rules[]`` with ``alert``,
``expr``, ``for``, ``keep_firing_for``, ``labels`` and ``annotations`` (templates
``{{ $labels.name }}`` and ``{{ $value }}``). Expressions are parsed by the maintained
``promql-parser`` package; what mpobs evaluates of PromQL (SUPPORTED_* below) is checked
here, so a rule mpobs cannot evaluate is refused before the run starts (exit 2), naming
the rule and the construct. Recording rules are refused the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from mpobs.errors import ConfigError

#: Functions an expression may call; the first four take a range ``x[5m]``.
RANGE_FUNCTIONS = frozenset({"rate", "irate", "increase", "delta"})
SUPPORTED_FUNCTIONS = RANGE_FUNCTIONS | {"histogram_quantile", "absent"}
SUPPORTED_AGGREGATIONS = frozenset({"sum", "avg", "max", "min"})
ARITHMETIC = frozenset({"+", "-", "*", "/", "%", "^"})
COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
SET_OPERATORS = frozenset({"and", "or", "unless"})
GROUP_KEYS = frozenset({"name", "interval", "rules", "limit", "labels"})
RULE_KEYS = frozenset({"alert", "expr", "for", "keep_firing_for", "labels", "annotations"})
#: What a template may hold: ``{{ $labels.x }}``, ``{{ $value }}`` (and ``$labels``/``$value`` alone).
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
_TEMPLATE_BODY = re.compile(r"^\s*\$(value|labels(\.[A-Za-z_][A-Za-z0-9_]*)?)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULTS = "defaults.yml"


class RuleFileError(ConfigError):
    """A rule file mpobs cannot take (exit 2); ``problems`` lists every one found, one a line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(problems))
        self.path, self.problems = path, problems


@dataclass(frozen=True)
class AlertRule:
    group: str
    name: str
    expr: str
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    metrics: frozenset[str] = frozenset()  # the metric names its expression selects
    interval_s: float | None = None  # its group's evaluation interval, if the file gives one


def defaults_text() -> str:
    """The shipped default rules (``mpobs alerts defaults``)."""
    return resources.files("mpobs.alerts").joinpath(DEFAULTS).read_text(encoding="utf-8")


def load_rules(path: str, known: Iterable[str] | None = None, text: str | None = None) -> list[AlertRule]:
    """The alerting rules of the file at ``path`` (or of ``text``); RuleFileError naming every problem.

    ``known``: the metric names the run exposes; a rule selecting another is a problem.
    """
    import yaml

    try:
        if text is None:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        doc = yaml.safe_load(text)
    except OSError as err:
        raise RuleFileError(path, [f"cannot read it: {err.strerror or err}"]) from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
        raise RuleFileError(path, [f"invalid YAML{at}: {getattr(err, 'problem', None) or err}"]) from None
    problems: list[str] = []
    rules = _groups(doc, problems)
    if known is not None:
        names = set(known)
        for rule in rules:
            for metric in sorted(rule.metrics - names):
                problems.append(f"rule {rule.name!r}: no metric {metric!r} in this run's /metrics")
    if problems:
        raise RuleFileError(path, problems)
    return rules


def _groups(doc: Any, problems: list[str]) -> list[AlertRule]:
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        problems.append("a rule file is a mapping with a list of groups (groups: [...])")
        return []
    unknown = set(doc) - {"groups"}
    if unknown:
        problems.append(f"unknown top-level keys {sorted(unknown)}")
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for i, group in enumerate(doc["groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("name"), str) or not group["name"]:
            problems.append(f"group {i + 1}: needs a name")
            continue
        name = group["name"]
        if name in seen:
            problems.append(f"group {name!r}: repeated")
        seen.add(name)
        for key in sorted(set(group) - GROUP_KEYS):
            problems.append(f"group {name!r}: unknown key {key!r}")
        interval = (
            _duration(group.get("interval"), f"group {name!r}: interval", problems) if "interval" in group else None
        )
        if not isinstance(group.get("rules"), list):
            problems.append(f"group {name!r}: rules must be a list")
            continue
        for j, raw in enumerate(group["rules"]):
            rule = _rule(name, j, raw, problems)
            if rule is not None:
                rules.append(AlertRule(**{**rule.__dict__, "interval_s": interval}))
    return rules


def _rule(group: str, j: int, raw: Any, problems: list[str]) -> AlertRule | None:
    if not isinstance(raw, dict):
        problems.append(f"group {group!r}, rule {j + 1}: a rule is a mapping")
        return None
    if "record" in raw:
        problems.append(
            f"group {group!r}, rule {j + 1} (record {raw.get('record')!r}): recording rules are not "
            "supported; mpobs evaluates alerting rules"
        )
        return None
    name = raw.get("alert")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"group {group!r}, rule {j + 1}: alert must be a name (letters, digits, _), got {name!r}")
        return None
    where = f"rule {name!r}"
    before = len(problems)
    for key in sorted(set(raw) - RULE_KEYS):
        problems.append(f"{where}: unknown key {key!r}")
    expr = raw.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        problems.append(f"{where}: expr must be a PromQL expression")
        return None
    metrics = check_expr(expr, where, problems)
    labels = _strings(raw.get("labels", {}), f"{where}: labels", problems)
    annotations = _strings(raw.get("annotations", {}), f"{where}: annotations", problems)
    for key, value in {**labels, **annotations}.items():
        for body in _TEMPLATE.findall(value):
            if not _TEMPLATE_BODY.match(body):
                problems.append(
                    f"{where}: template {{{{{body}}}}} in {key!r}: only {{{{ $labels.NAME }}}} and "
                    "{{ $value }} are supported"
                )
    for_s = _duration(raw.get("for"), f"{where}: for", problems) if "for" in raw else 0.0
    keep = (
        _duration(raw.get("keep_firing_for"), f"{where}: keep_firing_for", problems)
        if "keep_firing_for" in raw
        else 0.0
    )
    if len(problems) > before:
        return None
    return AlertRule(group, name, expr, for_s or 0.0, keep or 0.0, labels, annotations, frozenset(metrics))


def _strings(value: Any, where: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        problems.append(f"{where} must map names to strings")
        return {}
    for k in value:
        if not _NAME.match(k):
            problems.append(f"{where}: {k!r} is not a label name")
    return dict(value)


def _duration(value: Any, where: str, problems: list[str]) -> float | None:
    import promql_parser

    try:
        return promql_parser.parse_duration(str(value)).total_seconds()
    except Exception:
        problems.append(f"{where}: {value!r} is not a duration (like 30s, 5m, 1h)")
        return None


def check_expr(expr: str, where: str, problems: list[str]) -> set[str]:
    """Parse ``expr`` and check it uses only what mpobs evaluates; the metric names it selects."""
    import promql_parser

    try:
        tree = promql_parser.parse(expr)
    except Exception as err:
        problems.append(f"{where}: expr does not parse: {err}")
        return set()
    names: set[str] = set()
    _walk(tree, f"{where}: expr", problems, names)
    return names


def _walk(node: Any, where: str, problems: list[str], names: set[str], in_range: bool = False) -> None:
    import promql_parser as p

    def refuse(what: str) -> None:
        problems.append(f"{where}: {what} is not supported")

    if isinstance(node, (p.ParenExpr, p.UnaryExpr)):
        _walk(node.expr, where, problems, names)
    elif isinstance(node, p.NumberLiteral):
        pass
    elif isinstance(node, p.StringLiteral):
        refuse("a string literal")
    elif isinstance(node, p.SubqueryExpr):
        refuse("a subquery ([range:step])")
    elif isinstance(node, p.VectorSelector):
        _selector(node, where, problems, names)
    elif isinstance(node, p.MatrixSelector):
        if not in_range:
            refuse("a range selector outside rate/irate/increase/delta")
        _selector(node.vector_selector, where, problems, names)
    elif isinstance(node, p.Call):
        fn = node.func.name
        if fn not in SUPPORTED_FUNCTIONS:
            refuse(f"the function {fn}()")
            return
        for arg in node.args:
            _walk(arg, where, problems, names, in_range=fn in RANGE_FUNCTIONS)
    elif isinstance(node, p.AggregateExpr):
        op = str(node.op)
        if op not in SUPPORTED_AGGREGATIONS:
            refuse(f"the aggregation {op}")
            return
        if node.modifier is not None and node.modifier.type != p.AggModifierType.By:
            refuse(f"{op} without (...) (use by (...))")
        _walk(node.expr, where, problems, names)
    elif isinstance(node, p.BinaryExpr):
        op = str(node.op)
        if op not in ARITHMETIC | COMPARISONS | SET_OPERATORS:
            refuse(f"the operator {op}")
        mod = node.modifier
        if mod is not None and mod.card not in (
            None,
            p.VectorMatchCardinality.OneToOne,
            p.VectorMatchCardinality.ManyToMany,
        ):
            refuse("group_left/group_right")
        _walk(node.lhs, where, problems, names)
        _walk(node.rhs, where, problems, names)
    else:
        refuse(type(node).__name__)


def _selector(vs: Any, where: str, problems: list[str], names: set[str]) -> None:
    if vs.offset is not None:
        problems.append(f"{where}: offset is not supported")
    if vs.at is not None:
        problems.append(f"{where}: @ is not supported")
    if vs.matchers.or_matchers:
        problems.append(f"{where}: 'or' between label matchers is not supported")
    name = vs.name
    if name is None:
        problems.append(f"{where}: a selector needs a metric name")
    else:
        names.add(name)
