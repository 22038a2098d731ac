"""Error records and traces name the input and its line; --max-errors on a stream."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mpobs.tracing.tracefile import read_traces
from tests.helpers import (
    SMALL_TASKS,
    assert_no_traceback,
    fn_config,
    log_bytes,
    ok,
    run_process,
)
from tests.reference import split_lines

CHECK_FNS = """
def check(line):
    if 'BOOM' in line:
        raise ValueError('boom: ' + line[:20])
    return line
"""


def records_inputs(tmp_path: Path) -> tuple[list[str], list[bytes]]:
    """Three inputs (a file, stdin, a file in a folder); BOOM on some lines of each."""
    (tmp_path / "sub").mkdir()
    a = b"".join(b"a %d%s\n" % (i, b" BOOM" if i in (5, 17, 33) else b"") for i in range(1, 41))
    s = b"".join(b"s %d%s\n" % (i, b" BOOM" if i == 2 else b"") for i in range(1, 21))
    b = b"".join(b"b %d%s\n" % (i, b" BOOM" if i in (1, 30) else b"") for i in range(1, 30)) + b"b 30 BOOM"
    (tmp_path / "a.log").write_bytes(a)
    (tmp_path / "sub" / "b.log").write_bytes(b)
    return ["a.log", "-", "sub/b.log"], [a, s, b]


def expected_lines(given: list[str], parts: list[bytes]) -> list[dict[str, Any]]:
    """Each line: its input as given, number in it, run-wide number, line_id and text."""
    rows, n = [], 0
    for name, part in zip(given, parts):
        base = "stdin" if name == "-" else os.path.basename(name)
        for file_line, text in enumerate(split_lines(part), 1):
            n += 1
            rows.append(
                {"file": name, "file_line": file_line, "line_number": n, "line_id": f"{base}:{file_line}", "text": text}
            )
    return rows


def test_error_records_name_the_file_and_its_line(tmp_path: Path) -> None:
    given, parts = records_inputs(tmp_path)
    check = {"type": "python", "id": "check", "function": "checkfns:check"}
    config = fn_config(tmp_path, "checkfns", CHECK_FNS, [check])
    r = ok(run_process(tmp_path, *given, cwd=tmp_path, input=parts[1], config=config, extra=SMALL_TASKS))
    want = [
        {k: row[k] for k in ("file", "file_line", "line_number", "line_id")}
        for row in expected_lines(given, parts)
        if "BOOM" in row["text"]
    ]
    assert len(want) == 6
    assert r.stats is not None
    assert r.stats["processors"]["check"]["errors"] == 6
    got = sorted(
        ({k: rec[k] for k in ("file", "file_line", "line_number", "line_id")} for rec in r.stats["recent_errors"]),
        key=lambda x: x["line_number"],
    )
    assert got == want
    for rec in r.stats["recent_errors"]:
        assert rec["processor"] == "check" and rec["error_type"] == "ValueError"


def test_traces_name_the_file_and_its_line(tmp_path: Path) -> None:
    given, parts = records_inputs(tmp_path)
    saved = tmp_path / "traces.jsonl"
    r = ok(
        run_process(
            tmp_path,
            *given,
            cwd=tmp_path,
            input=parts[1],
            extra=(*SMALL_TASKS, "--trace", "--trace-sample", "1", "--save-traces", str(saved)),
        )
    )
    rows = expected_lines(given, parts)
    traces = sorted(read_traces(str(saved)), key=lambda t: t["line_number"])
    assert [t["line_number"] for t in traces] == list(range(1, len(rows) + 1))
    for t, row in zip(traces, rows):
        assert (t["file"], t["file_line"], t["line_id"]) == (row["file"], row["file_line"], row["line_id"])
        assert t["original_content"] == row["text"]
    assert r.stats is not None
    assert r.stats["system"]["total_lines"] == len(rows)


FAIL_FNS = """
def check(line):
    if 'ERROR' in line:
        raise ValueError('refusing ' + line[:10])
    return line
"""


def test_max_errors_on_stdin_stops_with_exit_3(tmp_path: Path) -> None:
    data = log_bytes(20_000, seed=4)
    config = fn_config(
        tmp_path,
        "failfns",
        FAIL_FNS,
        [
            {"type": "line_counter", "id": "num"},
            {"type": "python", "id": "check", "function": "failfns:check"},
        ],
    )
    r = run_process(tmp_path, "-", input=data, config=config, extra=("--max-errors", "5", "--task-size", "8192"))
    assert r.code == 3, r.err
    assert_no_traceback(r)
    assert "--max-errors 5" in r.err and "last: check on stdin:" in r.err
    assert r.stats is not None and r.out is not None
    assert r.stats["system"]["total_lines"] < 20_000
    assert r.out.count(b"\n") == r.stats["processors"]["check"]["lines_out"]
    lines = split_lines(data)
    kept = [f"Line {n}: {x}\n" for n, x in enumerate(lines, 1) if "ERROR" not in x]
    assert r.out == "".join(kept[: r.out.count(b"\n")]).encode()
