"""The command line's own errors: one ``mpobs: error: ...`` line naming the problem, the documented exit code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import fn_config


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["process", "--folow"],
            "mpobs: error: no such option '--folow'. Did you mean '--follow'? (see mpobs process --help)",
        ),
        (
            ["proces"],
            "mpobs: error: no such command 'proces'. (Did you mean one of: 'process', 'traces'?) (see mpobs --help)",
        ),
        (
            ["process", "-w", "abc"],
            "mpobs: error: invalid value for '-w' / '--workers': 'abc' is not a valid integer "
            "range. (see mpobs process --help)",
        ),
        (["validate"], "mpobs: error: missing argument 'CONFIG_PATH'. (see mpobs validate --help)"),
    ],
)
def test_usage_errors_are_one_line_with_click_s_hint(cli: Any, args: list[str], says: str) -> None:
    res = cli(*args)
    assert res.returncode == 2
    assert res.stderr.decode() == says + "\n" and res.stdout == b""


def test_help_and_version_are_as_click_shows_them(cli: Any) -> None:
    res = cli("process", "--help")
    assert res.returncode == 0 and res.stdout.decode().startswith("Usage: mpobs process [OPTIONS] [INPUTS]...")
    assert cli("--version").stdout.decode().startswith("mpobs, version ")
    bare = cli()  # the group's help, as click gives it for no command
    assert bare.returncode == 2 and "Commands:" in bare.stderr.decode() + bare.stdout.decode()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    ("args", "stdout", "says"),
    [
        (["-o", "/dev/full"], None, "I/O error: cannot write the output '/dev/full': No space left on device"),
        (
            ["-o", "{tmp}/out", "--save-metrics", "/dev/full"],
            None,
            "I/O error: cannot write the --save-metrics file '/dev/full': No space left on device",
        ),
        (
            ["-o", "{tmp}/out", "--save-traces", "/dev/full", "--trace-sample", "1"],
            None,
            "I/O error: cannot write the --save-traces file '/dev/full': No space left on device",
        ),
        ([], "/dev/full", "I/O error: cannot write standard output: No space left on device"),
    ],
)
def test_an_io_error_names_the_file_it_was_about(
    tmp_path: Path, cli: Any, make_log: Any, args: list[str], stdout: str | None, says: str
) -> None:
    import subprocess
    import sys

    log = make_log(20_000)
    cmd = [sys.executable, "-m", "mpobs", "process", str(log), "-q", *(a.format(tmp=tmp_path) for a in args)]
    with open(stdout or os.devnull, "wb") as out:
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, timeout=120)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert f"mpobs: error: {says}\n" in err and "Traceback" not in err and "internal error" not in err, err


def test_a_failed_save_metrics_after_a_failed_run_says_both(tmp_path: Path, cli: Any, make_log: Any) -> None:
    """The run's own failure stays the exit code and the last line; the metrics that could not be saved are said too."""
    log = make_log(2000)
    res = cli("process", str(log), "-q", "-o", "/dev/full", "--save-metrics", "/dev/full")
    err = res.stderr.decode().splitlines()
    assert res.returncode == 1
    assert err == [
        "mpobs: error: I/O error: cannot write the --save-metrics file '/dev/full': No space left on device",
        "mpobs: error: I/O error: cannot write the output '/dev/full': No space left on device",
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_max_errors_says_what_it_counted_and_what_the_output_holds(
    tmp_path: Path, cli: Any, make_log: Any, workers: int
) -> None:
    """Errors counted in tasks still running pass the limit; the output and the summary hold only finished
    tasks. The closing line gives both, and its second figure is the summary's and the saved metrics'."""
    import re

    log = make_log(20_000)
    fns = "def f(line):\n    if 'ERROR' in line:\n        raise ValueError('bad')\n    return line\n"
    config = fn_config(tmp_path, "maxfns", fns, [{"type": "python", "id": "f", "function": "maxfns:f"}])
    m = tmp_path / "m.json"
    res = cli(
        "process",
        str(log),
        "-c",
        str(config),
        "-w",
        str(workers),
        "--task-size",
        "50000",
        "-o",
        str(tmp_path / "out"),
        "--save-metrics",
        str(m),
        "--max-errors",
        "300",
    )
    err = res.stderr.decode()
    assert res.returncode == 3, err
    found = re.search(
        r"--max-errors 300 reached \(([\d,]+) errors counted, last: f on in\.log:\d+: ValueError: bad\); "
        r"the output and the counts cover the ([\d,]+) input lines finished before the stop "
        r"\(([\d,]+) errors among them\)",
        err,
    )
    assert found, err
    counted, lines, errors = (int(g.replace(",", "")) for g in found.groups())
    saved = json.loads(m.read_text())["system"]
    assert counted >= 300 and (saved["total_lines"], saved["total_errors"]) == (lines, errors)
    assert f"failed: {lines:,} lines in" in err and f"{errors:,} errors\n" in err
    out_lines = (tmp_path / "out").read_bytes().count(b"\n")
    assert out_lines == lines - errors  # each failing line stops at f; every other line is written


def test_the_summary_shows_tags_and_each_counter_s_top_keys_the_rest_summed() -> None:
    from mpobs.cli.report import counts_section, summary

    counts = {f"k{i:02d}": 100 - i for i in range(15)}  # k00 100 ... k14 86
    lines = counts_section("counter c", counts, sum(counts.values()), "counted")
    total = sum(counts.values())
    assert lines[0] == f"counter c (top 10 of 15 keys, of {total:,} counted):"
    assert lines[1] == f"  k00         100 {f'{100 / total * 100:.1f}%':>6}"
    assert lines[10].split()[0] == "k09" and len(lines) == 12
    rest = sum(range(86, 91))
    assert lines[11] == f"  (5 others)  {rest} {f'{rest / total * 100:.1f}%':>6}"
    assert counts_section("tags", {}, 10, "lines") == []
    doc = {
        "processors": {},
        "system": {
            "state": "done",
            "total_lines": 4,
            "elapsed_s": 1.0,
            "lines_per_second": 4.0,
            "workers": 1,
            "total_errors": 0,
        },
        "tags": {"error": 1, "info": 3},
        "counters": {"c": {"a": 2, "b": 2}},
    }
    text = summary(doc)
    assert "tags (of 4 lines):\n  info   3  75.0%\n  error  1  25.0%" in text, text
    assert "counter c (of 4 counted):\n  a  2  50.0%\n  b  2  50.0%" in text, text


def test_a_refused_run_writes_no_summary_and_no_saved_metrics(tmp_path: Path, make_log: Any) -> None:
    """Refused with exit 2 after the run began (stdout closed, found when the output is opened): one line,
    no summary of a run that never ran, and the --save-metrics path untouched."""
    import subprocess
    import sys

    log = make_log(100)
    m = tmp_path / "m.json"
    res = subprocess.run(
        ["sh", "-c", f'exec "$0" -m mpobs process {log} --save-metrics {m} >&-', sys.executable],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.decode() == "mpobs: error: stdout is closed; give an output file with --output\n"
    assert not m.exists()


def test_a_key_from_the_log_reaches_the_terminal_escaped_and_cut() -> None:
    """Counter keys are log content: an escape sequence or a newline in one never reaches the terminal as such."""
    from mpobs.cli.report import counts_section

    lines = counts_section("counter c", {"\x1b[2J\x1b[31mred\nnext": 3, "x" * 500: 1}, 4, "counted")
    assert lines[1].startswith("  \\x1b[2J\\x1b[31mred\\nnext") and "\x1b" not in "".join(lines)
    assert lines[2].split()[0] == "x" * 59 + "…" and all("\n" not in line for line in lines)
