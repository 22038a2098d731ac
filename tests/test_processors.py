"""Each processor type: a list of lines in, the list of lines out."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from mpobs.errors import ConfigError
from mpobs.metrics.layout import PROC_WIDTH
from mpobs.pipeline.batch import Batch
from mpobs.pipeline.config import compile_config


def run(procs: list[dict[str, Any]], lines: list[str], first: int = 1) -> tuple[list[str], Any]:
    pipeline = compile_config({"processors": procs})
    acc = [0] * (PROC_WIDTH * len(procs))
    errors: list[Any] = []
    out = pipeline.run_batch(Batch(list(range(first, first + len(lines))), list(lines)), acc, errors)
    return out.texts, errors


def test_line_counter_default_format_uses_input_line_numbers() -> None:
    out, _ = run([{"type": "line_counter", "id": "n"}], ["a", "b"], first=41)
    assert out == ["Line 41: a", "Line 42: b"]


def test_line_counter_braces_and_percent_in_the_line_are_text() -> None:
    out, _ = run([{"type": "line_counter", "id": "n", "format": "{line} <{count}> 100%"}], ["{count} %s {line}"])
    assert out == ["{count} %s {line} <1> 100%"]


def test_line_counter_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match=r"processor 'n' \(line_counter\): format .* has the field \{user\}"):
        compile_config({"processors": [{"type": "line_counter", "id": "n", "format": "{user}: {line}"}]})


@pytest.mark.parametrize(("ptype", "expected"), [("uppercase", ["ABC SS→Σ", "X"]), ("lowercase", ["abc ß→σ", "x"])])
def test_case_processors(ptype: str, expected: list[str]) -> None:
    assert run([{"type": ptype, "id": "c"}], ["aBc ß→σ" if ptype == "uppercase" else "aBC ß→Σ", "x"])[0] == expected


def test_filter_pattern_ignore_case_and_invert() -> None:
    lines = ["an Error here", "fine", "ERROR"]
    assert run([{"type": "filter", "id": "f", "pattern": "error"}], lines)[0] == []
    assert run([{"type": "filter", "id": "f", "pattern": "error", "ignore_case": True}], lines)[0] == [
        "an Error here",
        "ERROR",
    ]
    assert run([{"type": "filter", "id": "f", "pattern": "ERROR", "invert": True}], lines)[0] == [
        "an Error here",
        "fine",
    ]


def test_filter_by_tag_keeps_tagged_lines() -> None:
    procs = [{"type": "tag_extractor", "id": "t"}, {"type": "filter", "id": "f", "tag": "warn"}]
    assert run(procs, ["x WARN a", "x WARNING b", "x ERROR c", "WARNINGS"])[0] == ["x WARN a", "x WARNING b"]


def test_tag_extractor_default_rule_first_match_and_text_unchanged() -> None:
    pipeline = compile_config({"processors": [{"type": "tag_extractor", "id": "t"}]})
    batch = Batch([1, 2, 3, 4], ["INFO then ERROR", "DEBUG", "xERROR", ""])
    out = pipeline.run_batch(batch, [0] * PROC_WIDTH, [])
    assert out.texts == batch.texts
    assert out.tags == [("info",), ("debug",), (), ()]
    assert pipeline.nodes[0].proc.key_counts == {"info": 1, "debug": 1}


def test_tag_extractor_custom_rules_first_or_multi() -> None:
    rules = {"db": "sql|postgres", "slow": r"\d{4} ms"}
    first = compile_config({"processors": [{"type": "tag_extractor", "id": "t", "rules": rules}]})
    multi = compile_config({"processors": [{"type": "tag_extractor", "id": "t", "rules": rules, "multi": True}]})
    batch = Batch([1, 2], ["postgres took 2000 ms", "nothing"])
    assert first.run_batch(batch, [0] * PROC_WIDTH, []).tags == [("db",), ()]
    assert multi.run_batch(batch, [0] * PROC_WIDTH, []).tags == [("db", "slow"), ()]


def test_router_first_matching_route_then_default() -> None:
    procs = [
        {"type": "tag_extractor", "id": "t"},
        {"type": "router", "id": "r", "routes": {"err": {"tag": "error"}, "db": "db"}, "default": "other"},
        {"type": "line_counter", "id": "e", "format": "E {line}", "inputs": ["r.err"]},
        {"type": "line_counter", "id": "d", "format": "D {line}", "inputs": ["r.db"]},
        {"type": "line_counter", "id": "o", "format": "O {line}", "inputs": ["r.other"]},
    ]
    out, _ = run(procs, ["db ERROR", "db ok", "x"])
    assert out == ["E db ERROR", "D db ok", "O x"]


def test_router_without_default_drops_unmatched() -> None:
    procs = [{"type": "router", "id": "r", "routes": {"a": "a"}}, {"type": "uppercase", "id": "u", "inputs": ["r.a"]}]
    assert run(procs, ["a1", "b2", "a3"])[0] == ["A1", "A3"]


def test_counter_counts_by_regex_group_and_passes_lines() -> None:
    pipeline = compile_config({"processors": [{"type": "counter", "id": "c", "by": r"user=(\w+)"}]})
    out = pipeline.run_batch(Batch([1, 2, 3], ["user=a", "user=b x", "user=a"]), [0] * PROC_WIDTH, [])
    assert out.texts == ["user=a", "user=b x", "user=a"]
    assert pipeline.nodes[0].proc.key_counts == {"a": 2, "b": 1}


def test_python_function_replace_drop_and_many(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "userfns.py").write_text(
        "def f(line):\n"
        "    if line == 'drop': return None\n"
        "    if line == 'two': return ['t1', 't2']\n"
        "    if line == 'bad': raise KeyError('bad line')\n"
        "    return line[::-1]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("userfns", None)
    out, errors = run([{"type": "python", "id": "p", "function": "userfns:f"}], ["abc", "drop", "two", "bad", "xy"])
    assert out == ["cba", "t1", "t2", "yx"]
    assert [(p, n, t, type(e).__name__) for p, n, t, e in errors] == [(0, 4, "bad", "KeyError")]


def test_python_batch_function_and_fallback_to_lines(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "batchfns.py").write_text(
        "def upper_all(lines):\n"
        "    if any(l == 'bad' for l in lines): raise ValueError('no bad lines')\n"
        "    return [l.upper() for l in lines]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("batchfns", None)
    proc = {"type": "python", "id": "p", "function": "batchfns:upper_all", "batch": True}
    assert run([proc], ["a", "b"])[0] == ["A", "B"]
    out, errors = run([proc], ["a", "bad", "c"])
    assert out == ["A", "C"]
    assert [(n, type(e).__name__) for _, n, _, e in errors] == [(2, "ValueError")]


def test_a_batch_function_with_a_wrong_count_of_results_says_so(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """It returns one result too few, or a dict: every line is an error naming what is wrong, not IndexError."""
    (tmp_path / "countfns.py").write_text("def short(lines):\n    return lines[1:]\ndef wrong(lines):\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("countfns", None)
    out, errors = run([{"type": "python", "id": "p", "function": "countfns:short", "batch": True}], ["a", "b", "c"])
    assert out == []
    assert [(n, type(e).__name__, str(e)) for _, n, _, e in errors] == [
        (k, "TypeError", "batch function returned 2 results for 3 lines") for k in (1, 2, 3)
    ]
    out, errors = run([{"type": "python", "id": "p", "function": "countfns:wrong", "batch": True}], ["a"])
    assert str(errors[0][3]) == "batch function returned dict, not a list of one answer per line"


def test_python_function_wrong_return_type_is_an_error_of_that_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "retfns.py").write_text("def f(line):\n    return 42 if line == 'x' else line\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("retfns", None)
    out, errors = run([{"type": "python", "id": "p", "function": "retfns:f"}], ["a", "x", "b"])
    assert out == ["a", "b"]
    assert "must return a str, None or a list of str" in str(errors[0][3])


def test_fan_out_and_fan_in_keep_input_order_and_sink_order() -> None:
    procs = [
        {"type": "uppercase", "id": "up", "inputs": ["input"]},
        {"type": "lowercase", "id": "low", "inputs": ["input"]},
        {"type": "filter", "id": "f", "pattern": "[Bb]", "inputs": ["up", "low"]},
        {"type": "line_counter", "id": "n", "format": "{count}:{line}", "inputs": ["input"]},
    ]
    out, _ = run(procs, ["aB", "c", "b"])
    # per input line: sink f (fan-in: up's copy, then low's copy), then sink n
    assert out == ["AB", "ab", "1:aB", "2:c", "B", "b", "3:b"]
