"""The in-process harness (mpobs.testing): what it gives back, and that it leaves nothing behind."""

from __future__ import annotations

import gzip
import os
import sys
import tempfile
from pathlib import Path

import pytest

from mpobs.errors import ConfigError, InputError
from mpobs.testing import RunFailed, run_pipeline
from tests.helpers import segments_of, write_config

TAGGED = {
    "processors": [
        {"type": "tag_extractor", "id": "tags"},
        {"type": "counter", "id": "words", "by": r"^\w+ (\w+)"},
        {"type": "filter", "id": "no_debug", "tag": "debug", "invert": True},
        {"type": "uppercase", "id": "up"},
    ]
}
LINES = ["INFO start up", "DEBUG noise here", "ERROR disk full", "INFO start again", "WARN slow disk"] * 40

FAILING_FNS = (
    "def check(line):\n    if 'ERROR' in line:\n        raise ValueError('no errors: ' + line)\n    return line\n"
)


def shout(line: str) -> str:
    """A user function the config names by this module's import name."""
    return line.upper() + "!"


def test_lines_in_lines_counts_tags_and_counters_out(workers: int) -> None:
    result = run_pipeline(TAGGED, LINES, workers=workers)
    kept = [x.upper() for x in LINES if "DEBUG" not in x]
    assert result.lines == kept
    assert result.output == "".join(x + "\n" for x in kept).encode()
    assert result.counts["tags"] | {"batches": 0} == {"lines_in": 200, "lines_out": 200, "errors": 0, "batches": 0}
    assert result.counts["no_debug"]["lines_out"] == result.counts["up"]["lines_in"] == 160
    assert result.tags == {"info": 80, "debug": 40, "error": 40, "warn": 40}
    assert result.counters == {"words": {"start": 80, "noise": 40, "disk": 40, "slow": 40}}
    assert result.stats["system"]["state"] == "done" and result.stats["meta"]["executor"] == "adversarial"
    assert result.stats["system"]["tasks_done"] > 1  # small tasks by default: the order of tasks is tested too
    assert (result.exit_code, result.message, result.errors, result.traces) == (0, None, [], [])


def test_the_same_answer_when_tasks_are_lost_and_run_again() -> None:
    calm = run_pipeline(TAGGED, LINES, workers=3)
    rough = run_pipeline(TAGGED, LINES, workers=3, lose=0.3, seed=4)
    assert rough.lines == calm.lines and rough.counts == calm.counts and rough.counters == calm.counters


def test_data_as_raw_bytes_lines_of_bytes_or_files() -> None:
    raw = run_pipeline({"processors": [{"type": "line_counter", "id": "n"}]}, b"a\r\n\xff\nno newline")
    assert raw.lines == ["Line 1: a\r", "Line 2: \udcff", "Line 3: no newline"]
    assert raw.output == b"Line 1: a\r\nLine 2: \xff\nLine 3: no newline\n"
    as_bytes = run_pipeline({"processors": [{"type": "line_counter", "id": "n"}]}, [b"a\r", b"\xff", b"no newline"])
    assert as_bytes.output == raw.output
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp, "a.log"), Path(tmp, "b.log.gz")
        a.write_bytes(b"one\ntwo")
        b.write_bytes(gzip.compress(b"three\n"))
        files = run_pipeline(
            {"processors": [{"type": "line_counter", "id": "n", "format": "{file_line}:{line}"}]}, [a, b]
        )
    assert files.lines == ["1:one", "2:two", "1:three"]
    assert [(i["name"], i["compression"], i["lines"]) for i in files.stats["inputs"]] == [
        (str(a), None, 2),
        (str(b), "gzip", 1),
    ]
    assert run_pipeline(TAGGED, []).lines == []


def test_errors_are_every_record_in_line_order(workers: int) -> None:
    config = {"processors": [{"type": "python", "id": "check", "function": "failfns:check"}]}
    result = run_pipeline(config, LINES, workers=workers, functions={"failfns": FAILING_FNS})
    assert result.lines == [x for x in LINES if "ERROR" not in x]
    assert len(result.errors) == 40 == result.counts["check"]["errors"]  # all of them, not the last 100 only
    assert [e["line_number"] for e in result.errors] == [n for n, x in enumerate(LINES, 1) if "ERROR" in x]
    first = result.errors[0]
    assert (first["processor"], first["line_id"], first["error_type"]) == ("check", "in.log:3", "ValueError")
    assert first["message"] == "no errors: ERROR disk full"


def test_traces_every_sampled_line_without_timestamps(workers: int) -> None:
    config = {"processors": [{"type": "tag_extractor", "id": "tags"}, {"type": "filter", "id": "f", "tag": "error"}]}
    live = run_pipeline(config, LINES, workers=workers, trace=1.0)
    assert [t["line_number"] for t in live.traces] == list(range(1, 201))
    t = live.traces[2]
    assert (t["original_content"], t["outputs"]) == ("ERROR disk full", ["ERROR disk full"])
    assert t["path"] == [
        {"processor": "tags", "status": "emit", "tags": ["error"]},
        {"processor": "f", "status": "emit"},
    ]
    saved = run_pipeline(config, LINES, workers=workers, trace=1.0, save_traces=True)
    assert saved.traces == live.traces
    sampled = run_pipeline(config, LINES * 10, trace=True)  # the default rate
    assert 0 < len(sampled.traces) < 100


def test_a_config_file_and_its_functions_beside_it_each_run_its_own(tmp_path: Path) -> None:
    for n, word in enumerate(["first", "second"]):
        folder = tmp_path / str(n)
        folder.mkdir()
        (folder / "samefns.py").write_text(f"def f(line):\n    return line + ' {word}'\n")
        config = write_config(folder, [{"type": "python", "id": "p", "function": "samefns:f"}])
        assert run_pipeline(config, ["a"]).lines == [f"a {word}"]  # not the module of the run before
        assert "samefns" not in sys.modules and str(folder) not in sys.path
    named = {"processors": [{"type": "python", "id": "p", "function": "tests.test_testing:shout"}]}
    assert run_pipeline(named, ["a"]).lines == ["A!"]


def test_a_failed_run_raises_with_its_result_unless_told_not_to() -> None:
    config = {"processors": [{"type": "python", "id": "check", "function": "failfns:check"}]}
    fns = {"failfns": FAILING_FNS}
    with pytest.raises(RunFailed, match=r"exit code 3: stopped: --max-errors 5 reached") as err:
        run_pipeline(config, LINES * 10, max_errors=5, functions=fns)
    assert err.value.result.exit_code == 3 and err.value.result.stats["system"]["state"] == "failed"
    result = run_pipeline(config, LINES * 10, max_errors=5, functions=fns, check=False)
    assert result.exit_code == 3 and len(result.lines) == result.counts["check"]["lines_out"] < 1600
    with pytest.raises(ConfigError, match=r"processor 'x': unknown type 'nope'"):
        run_pipeline({"processors": [{"type": "nope", "id": "x"}]}, ["a"])
    with pytest.raises(InputError, match="no such file"):
        run_pipeline(TAGGED, Path("/nonexistent/in.log"))


def test_nothing_is_left_behind() -> None:
    """No segment of this process in /dev/shm, no temporary folder, sys.path as it was: after good and bad runs."""
    path_before = list(sys.path)
    folders = {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("mpobs-testing-")}
    run_pipeline(TAGGED, LINES, workers=2, trace=1.0, save_traces=True)
    run_pipeline(
        {"processors": [{"type": "python", "id": "p", "function": "failfns:check"}]},
        LINES,
        functions={"failfns": FAILING_FNS},
        max_errors=1,
        check=False,
    )
    with pytest.raises(ConfigError):
        run_pipeline({"processors": []}, LINES)
    assert segments_of(os.getpid()) == []
    assert {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("mpobs-testing-")} == folders
    assert sys.path == path_before and "failfns" not in sys.modules
