"""User functions that exit, kill their worker, hang or take too long: named, counted, never silent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.reference import split_lines
from tests.test_reliability import fn_config

EXIT_FNS = """
import sys
def leave(line):
    if "ERROR" in line:
        sys.exit(3)
    if "WARN" in line:
        raise KeyboardInterrupt
    return line
"""


def test_sys_exit_and_keyboard_interrupt_in_a_function_are_errors_of_their_lines(
    tmp_path: Path, cli: Any, fault_workers: int, make_log: Any
) -> None:
    log = make_log(3000)
    config = fn_config(tmp_path, "exitfns", EXIT_FNS, [{"type": "python", "id": "leave", "function": "exitfns:leave"}])
    out, m = tmp_path / "out", tmp_path / "m.json"
    res = cli("process", str(log), "-c", str(config), "-w", str(fault_workers), "-o", str(out), "-q",
              "--save-metrics", str(m), "--task-size", "4096")  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    lines = split_lines(log.read_bytes())
    kept = [x for x in lines if "ERROR" not in x and "WARN" not in x]
    assert out.read_bytes() == "".join(x + "\n" for x in kept).encode("utf-8", "surrogateescape")
    stats = json.loads(m.read_text())
    assert stats["processors"]["leave"]["errors"] == len(lines) - len(kept) > 0
    assert stats["system"]["workers_restarted"] == 0
    by_type = {e["error_type"]: e["count"] for e in stats["errors_by_type"]}
    assert by_type == {"SystemExit": sum("ERROR" in x for x in lines),
                       "KeyboardInterrupt": sum("WARN" in x and "ERROR" not in x for x in lines)}  # fmt: skip


CRASH_FNS = """
import ctypes, os
def by_exit(line):
    if "CRASH-HERE" in line:
        os._exit(7)
    return line
def by_segfault(line):
    if "CRASH-HERE" in line:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    return line
"""


@pytest.mark.parametrize("fn", ["by_exit", "by_segfault"])
def test_a_function_that_kills_its_worker_is_named_with_its_line(
    tmp_path: Path, cli: Any, fault_workers: int, make_log: Any, fn: str
) -> None:
    """os._exit and a segfault end the worker; after the third death the run fails naming the
    processor, the function and the line, and what is before the task is in the output and counted."""
    log = make_log(3000)
    lines = log.read_bytes().split(b"\n")
    lines[1499] = b"INFO CRASH-HERE " + lines[1499]
    log.write_bytes(b"\n".join(lines))
    config = fn_config(tmp_path, "crashfns", CRASH_FNS, [
        {"type": "filter", "id": "keep", "pattern": "."},
        {"type": "python", "id": "crash", "function": f"crashfns:{fn}"},
    ])  # fmt: skip
    out, m = tmp_path / "out", tmp_path / "m.json"
    res = cli("process", str(log), "-c", str(config), "-w", str(fault_workers), "-o", str(out), "-q",
              "--save-metrics", str(m), "--task-size", "8192")  # fmt: skip
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert "Traceback" not in err
    found = re.search(rf"mpobs: error: processor 'crash' \(function crashfns:{fn}\) at line in\.log:1500 killed its "
                      r"worker 3 times \(task \d+ \(lines (\d+)-\d+, bytes \d+-\d+\)\); giving up", err)  # fmt: skip
    assert found, err
    first = int(found[1])
    stats = json.loads(m.read_text())
    assert stats["system"]["state"] == "failed" and stats["system"]["workers_restarted"] == 3
    assert stats["system"]["total_lines"] == first - 1 == out.read_bytes().count(b"\n")
