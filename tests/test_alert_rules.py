"""Alert rule files: the syntax of Prometheus's, checked like `promtool check rules`, held to what mpobs evaluates."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mpobs.alerts.rules import defaults_text, load_rules
from tests.helpers import fn_config

GOOD = """
groups:
  - name: g
    interval: 10s
    rules:
      - alert: SlowBatches
        expr: histogram_quantile(0.99, sum by (le, processor) (rate(mpobs_processor_batch_seconds_bucket[5m]))) > 0.5
        for: 1m
        keep_firing_for: 30s
        labels: {severity: page}
        annotations: {summary: "{{ $labels.processor }} p99 is {{ $value }} s"}
      - alert: NoLines
        expr: absent(mpobs_lines_processed_total) or -delta(mpobs_lines_processed_total[1m]) >= 0
"""


def _file(tmp_path: Path, text: str, name: str = "rules.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_defaults_pass_promtool_and_our_own_check(tmp_path: Path, cli: Any) -> None:
    res = cli("alerts", "defaults")
    assert res.returncode == 0 and res.stdout.decode() == defaults_text()
    path = _file(tmp_path, res.stdout.decode())
    names = {r.name for r in load_rules(str(path))}
    assert names == {"MpobsProcessorErrorRatioHigh", "MpobsThroughputDropped", "MpobsStalled", "MpobsWorkerRestarted"}
    ours = cli("alerts", "check", str(path))
    assert ours.returncode == 0 and "SUCCESS: 4 rules found" in ours.stdout.decode()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs Debian prometheus (promtool)")
    theirs = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=60)
    assert theirs.returncode == 0, theirs.stdout.decode() + theirs.stderr.decode()


def test_a_good_file_is_read_whole(tmp_path: Path) -> None:
    rules = load_rules(str(_file(tmp_path, GOOD)))
    slow = rules[0]
    assert (slow.group, slow.name, slow.for_s, slow.keep_firing_for_s, slow.interval_s) == (
        "g",
        "SlowBatches",
        60,
        30,
        10,
    )
    assert slow.labels == {"severity": "page"} and slow.metrics == {"mpobs_processor_batch_seconds_bucket"}
    assert rules[1].metrics == {"mpobs_lines_processed_total"}


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ('label_replace(mpobs_workers, "a", "b", "c", "d")', "the function label_replace() is not supported"),
        ("rate(mpobs_lines_processed_total[5m:1m])", "a subquery"),
        ("rate(mpobs_lines_processed_total[1m] offset 5m)", "offset is not supported"),
        ("topk(3, mpobs_processor_errors_total)", "the aggregation topk is not supported"),
        ("sum without (processor) (mpobs_processor_errors_total)", "without (...)"),
        ("mpobs_processor_errors_total / on(processor) group_left mpobs_workers", "group_left/group_right"),
        ("rate(mpobs_lines_processed_total)", "does not parse"),
    ],
)
def test_unsupported_promql_is_refused_naming_the_rule_and_the_construct(
    tmp_path: Path, cli: Any, expr: str, says: str
) -> None:
    path = _file(tmp_path, f"groups:\n  - name: g\n    rules:\n      - alert: Bad\n        expr: '{expr}'\n")
    res = cli("alerts", "check", str(path))
    out = res.stdout.decode()
    assert res.returncode == 2, out
    assert "FAILED" in out and "rule 'Bad': expr" in out and says in out, out
    assert "Traceback" not in out + res.stderr.decode()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("groups: [", "invalid YAML at line"),
        ("rules: []", "a mapping with a list of groups"),
        (
            "groups:\n  - name: g\n    rules:\n      - record: r\n        expr: mpobs_workers\n",
            "recording rules are not supported",
        ),
        ("groups:\n  - name: g\n    rules:\n      - alert: A\n", "expr must be a PromQL expression"),
        (
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: mpobs_workers\n        for: soon\n",
            "'soon' is not a duration",
        ),
        (
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: mpobs_workers\n        labels: {a: 1}\n",
            "labels must map names to strings",
        ),
        (
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: mpobs_workers\n        annotations:\n"
            "          x: '{{ $labels.a | toUpper }}'\n",
            "only {{ $labels.NAME }} and {{ $value }}",
        ),
        (
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: mpobs_workers\n        severity: x\n",
            "unknown key 'severity'",
        ),
    ],
)
def test_a_bad_file_says_what_is_wrong_with_exit_2(tmp_path: Path, cli: Any, text: str, says: str) -> None:
    res = cli("alerts", "check", str(_file(tmp_path, text)))
    assert res.returncode == 2 and says in res.stdout.decode(), res.stdout.decode()


def test_with_a_config_the_metrics_must_exist_for_that_pipeline(tmp_path: Path, cli: Any) -> None:
    """mpobs_function_call_seconds exists for a pipeline with a python processor, not for the default one."""
    rule = (
        "groups:\n  - name: g\n    rules:\n      - alert: SlowCalls\n        expr: histogram_quantile(0.9, "
        "sum by (le) (rate(mpobs_function_call_seconds_bucket[1m]))) > 1\n"
    )
    path = _file(tmp_path, rule)
    default = tmp_path / "default.json"
    default.write_text('{"processors": [{"type": "uppercase", "id": "up"}]}')
    res = cli("alerts", "check", str(path), "--config", str(default))
    assert res.returncode == 2
    assert (
        "rule 'SlowCalls': no metric 'mpobs_function_call_seconds_bucket' in this run's /metrics" in res.stdout.decode()
    )
    config = fn_config(
        tmp_path,
        "alertfns",
        "def f(line):\n    return line\n",
        [{"type": "python", "id": "f", "function": "alertfns:f"}],
    )
    assert cli("alerts", "check", str(path), "--config", str(config)).returncode == 0
    typo = _file(tmp_path, rule.replace("mpobs_function_call_seconds_bucket", "mpobs_lines_total"), "typo.yml")
    res = cli("alerts", "check", str(typo), "--config", str(config))
    assert res.returncode == 2 and "no metric 'mpobs_lines_total'" in res.stdout.decode()
