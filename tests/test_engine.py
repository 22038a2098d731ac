"""The engine end to end: the same bytes and counts as one plain process, for any worker count."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mpobs.pipeline.config import DEFAULT_CONFIG
from mpobs.testing import run_pipeline
from tests.helpers import DAG_CONFIG, DAG_FNS, expected_dag, segments_of
from tests.reference import default_pipeline, split_lines

AWKWARD_INPUTS = {
    "no-multiple-of-task-size": b"".join(b"2026 INFO line %d padding %s\n" % (i, b"x" * (i % 37)) for i in range(700)),
    "last-line-without-newline": b"a ERROR one\nb WARN two\nc INFO three",
    "empty-lines": b"\n\nERROR a\n\n\nINFO b\n\n",
    "invalid-utf8": b"ERROR \xff\xfe bad\nINFO \xc3\x28 also\nWARN ok \xe2\x82\xac\n" * 50,
    "crlf": b"ERROR one\r\nINFO two\r\nDEBUG three\r\n" * 100,
    "line-longer-than-a-task": b"INFO short\n" + b"ERROR " + b"y" * 5000 + b"\nWARN after\n" + b"z" * 3000,
    "empty-file": b"",
    "one-byte": b"x",
    "only-newlines": b"\n" * 3000,
    "odd-characters": "INFO a\x0bb\x1cc\u2028d\x00e\rf\nERROR \u00e9\U0001f600\n".encode() * 40,
}


@pytest.mark.parametrize("name", list(AWKWARD_INPUTS))
def test_default_pipeline_matches_one_plain_process(workers: int, name: str) -> None:
    data = AWKWARD_INPUTS[name]
    result = run_pipeline(DEFAULT_CONFIG, data, workers=workers)  # many tasks and batches (SMALL_TASKS)
    expected, tags = default_pipeline(data)
    assert result.output == expected
    stats = result.stats
    n = len(split_lines(data))
    assert stats["system"]["total_lines"] == n
    assert stats["system"]["bytes_done"] == stats["system"]["bytes_total"] == len(data)
    assert stats["system"]["state"] == "done"
    assert stats["tags"] == tags
    procs = stats["processors"]
    assert procs["line_counter"]["lines_in"] == procs["line_counter"]["lines_out"] == n
    assert procs["tag_extractor"]["lines_out"] == n
    assert procs["error_filter"]["lines_out"] == tags["error"]
    assert procs["warn_filter"]["lines_out"] == tags["warn"]
    assert procs["info_filter"]["lines_out"] == tags["info"]
    assert sum(p["errors"] for p in procs.values()) == 0


def test_generated_log_same_with_1_2_3_workers(tmp_path: Path, cli: Any, make_log: Any) -> None:
    log = make_log(30_000, awkward=0.02)
    results = []
    for w in (1, 2, 3):
        out, m = tmp_path / f"out{w}.txt", tmp_path / f"m{w}.json"
        res = cli("process", str(log), "-w", str(w), "-o", str(out), "--save-metrics", str(m), "--task-size", "65536")
        assert res.returncode == 0, res.stderr.decode()
        stats = json.loads(m.read_text())
        counts = {
            pid: {k: v for k, v in p.items() if k in ("lines_in", "lines_out", "errors")}
            for pid, p in stats["processors"].items()
        }
        results.append((out.read_bytes(), counts, stats["tags"], stats["system"]["total_lines"]))
    assert results[0] == results[1] == results[2]
    assert results[0][0] == default_pipeline(log.read_bytes())[0]


def test_dag_with_fan_out_router_fan_in_and_python(workers: int, make_log: Any) -> None:
    log = make_log(4000, awkward=0.01)
    data = log.read_bytes() + b"x WARN explode\nx WARN dup me\nERROR [api] user login failed\n[db] no level\n"
    result = run_pipeline(DAG_CONFIG, data, workers=workers, functions={"dagfns": DAG_FNS})
    lines = split_lines(data)
    want, services, errors = expected_dag(lines)
    assert result.output == "".join(x + "\n" for x in want).encode("utf-8", "surrogateescape")
    stats = result.stats
    assert stats["counters"]["services"] == services
    assert stats["processors"]["annotate"]["errors"] == errors >= 1
    assert stats["processors"]["number"]["lines_out"] == len(want) - stats["processors"]["audit"]["lines_out"]
    assert stats["processors"]["route"]["lines_in"] == len(lines)


def test_results_go_to_stdout_and_nothing_else_does(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "in.log"
    log.write_bytes(b"a ERROR\nb DEBUG\nc INFO\n")
    res = cli("process", str(log), "-w", "2")
    assert res.returncode == 0
    assert res.stdout == b"Line 1: a ERROR\nLine 3: c INFO\n"
    assert b"error_filter" in res.stderr  # the summary table goes to stderr


def test_closed_stdout_pipe_ends_quietly(tmp_path: Path, make_log: Any) -> None:
    log = make_log(300_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpobs", "process", str(log), "-w", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err.decode()
    assert first.startswith(b"Line 1: ")
    assert b"Traceback" not in err
    assert b"BrokenPipe" not in err
    assert b"interrupted" in err


def test_no_shared_memory_left_after_runs(tmp_path: Path, cli: Any) -> None:
    log = tmp_path / "in.log"
    log.write_bytes(b"ERROR x\n" * 1000)
    (tmp_path / "failfns.py").write_text("def fail(line):\n    raise ValueError('no')\n")
    failing = tmp_path / "fail.json"
    failing.write_text(json.dumps({"processors": [{"type": "python", "id": "fail", "function": "failfns:fail"}]}))
    runs = (
        (["-w", "2", "-o", str(tmp_path / "o")], 0),  # done
        (["-w", "2", "-o", str(tmp_path / "o"), "-c", str(failing), "--max-errors", "5"], 3),  # stopped
        (["-w", "2", "--max-errors", "0"], 2),  # refused before any work
    )
    for args, code in runs:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mpobs", "process", str(log), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert proc.wait(timeout=60) == code
        assert not segments_of(proc.pid)


def test_sample_log_when_no_input_given(tmp_path: Path, cli: Any) -> None:
    out = tmp_path / "out.txt"
    res = cli("process", "-w", "2", "-o", str(out))
    assert res.returncode == 0, res.stderr.decode()
    assert b"running on a generated sample log" in res.stderr
    assert out.read_bytes().startswith(b"Line 1: ")


def _write_via(path: Path, data: bytes) -> None:
    from mpobs.output.joiner import open_replacing

    fd, closer = open_replacing(str(path))
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
        if closer is not None:
            closer.join()


def test_rerun_replaces_the_output_and_keeps_its_permissions(tmp_path: Path, cli: Any) -> None:
    log, out = tmp_path / "in.log", tmp_path / "out.txt"
    log.write_bytes(b"a ERROR\nb INFO\n")
    out.write_bytes(b"old output, longer than the new one\n" * 1000)
    out.chmod(0o640)
    reader = open(out, "rb")  # noqa: SIM115  (a reader of the old output, like tail -f)
    try:
        res = cli("process", str(log), "-w", "2", "-o", str(out))
        assert res.returncode == 0, res.stderr.decode()
        assert out.read_bytes() == b"Line 1: a ERROR\nLine 2: b INFO\n"
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
        assert reader.read(3) == b"old"  # it keeps the file it opened
    finally:
        reader.close()


def test_replaced_output_keeps_its_group_and_a_file_with_xattrs_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_bytes(b"old old old\n")
    groups = [g for g in os.getgroups() if g != os.getegid()] if os.geteuid() else [100]
    if groups:
        os.chown(out, -1, groups[0])
    gid, ino = out.stat().st_gid, out.stat().st_ino
    _write_via(out, b"new\n")
    assert out.read_bytes() == b"new\n" and out.stat().st_gid == gid
    assert out.stat().st_ino != ino  # replaced, not truncated
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left

    try:
        os.setxattr(out, "user.mpobs-test", b"keep me")
    except OSError:
        pytest.skip("this file system takes no user xattrs")
    ino = out.stat().st_ino
    _write_via(out, b"newer\n")
    assert out.read_bytes() == b"newer\n" and out.stat().st_ino == ino  # truncated in place
    assert os.getxattr(out, "user.mpobs-test") == b"keep me"


def test_replaced_output_never_gets_a_set_id_bit(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_bytes(b"old old old\n")
    out.chmod(0o4750)
    _write_via(out, b"new\n")
    assert out.read_bytes() == b"new\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750


def test_output_through_a_symlink_or_a_hard_link_is_rewritten_in_place(tmp_path: Path) -> None:
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_bytes(b"old old old\n")
    link.symlink_to(target)
    _write_via(link, b"new\n")
    assert link.is_symlink() and target.read_bytes() == b"new\n"

    other = tmp_path / "other-name.txt"
    os.link(target, other)
    _write_via(target, b"newer\n")
    assert other.read_bytes() == b"newer\n"  # both names are the same file still
    assert target.stat().st_ino == other.stat().st_ino


def test_output_in_a_folder_we_cannot_change_is_truncated(tmp_path: Path) -> None:
    log, folder = tmp_path / "in.log", tmp_path / "ro"
    log.write_bytes(b"a ERROR\n")
    folder.mkdir()
    out = folder / "out.txt"
    out.write_bytes(b"old old old\n")
    ino = out.stat().st_ino
    folder.chmod(0o555)
    cmd = [sys.executable, "-m", "mpobs", "process", str(log), "-w", "2", "-o", str(out)]
    if os.geteuid() == 0:
        # Root may change any folder: take away the capabilities that let it (util-linux setpriv).
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to test a read-only folder as root"
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr.decode()
        assert out.read_bytes() == b"Line 1: a ERROR\n" and out.stat().st_ino == ino
    finally:
        folder.chmod(0o755)


def test_output_device_is_written_not_replaced(tmp_path: Path) -> None:
    _write_via(Path(os.devnull), b"nothing\n")
    assert Path(os.devnull).is_char_device()


def test_cli_defaults_are_the_engines() -> None:
    from mpobs.cli.commands import process
    from mpobs.defaults import BATCH_LINES, TASK_BYTES

    defaults = {p.name: p.default for p in process.params}
    assert (defaults["batch_lines"], defaults["task_size"]) == (BATCH_LINES, TASK_BYTES)


def test_workers_get_one_blas_thread_unless_the_user_set_one(tmp_path: Path, make_log: Any) -> None:
    """Every worker has a core already: BLAS thread pools default to 1 in the workers; a user's own setting wins."""
    from mpobs.cli.commands import BLAS_THREAD_VARS

    (tmp_path / "blasfns.py").write_text(
        f"import os\ndef env(line):\n    return ','.join(os.environ.get(v, '-') for v in {BLAS_THREAD_VARS!r})\n"
    )
    config = tmp_path / "blas.json"
    config.write_text(json.dumps({"processors": [{"type": "python", "id": "env", "function": "blasfns:env"}]}))
    log = make_log(40)
    clean = {k: v for k, v in os.environ.items() if k not in BLAS_THREAD_VARS}

    def values(**extra: str) -> set[str]:
        out = tmp_path / "out.txt"
        cmd = [sys.executable, "-m", "mpobs", "process", str(log), "-c", str(config), "-w", "2", "-q", "-o", str(out)]
        res = subprocess.run(cmd, capture_output=True, timeout=60, env={**clean, **extra})
        assert res.returncode == 0, res.stderr.decode()
        return set(out.read_text().splitlines())

    assert values() == {"1,1,1"}
    assert values(OPENBLAS_NUM_THREADS="3", OMP_NUM_THREADS="2") == {"3,1,2"}


def test_a_run_imports_no_numpy_unless_something_asks(tmp_path: Path, make_log: Any, workers: int) -> None:
    """numpy costs every process 50-70 ms to import; counting, planning and tracing at 0.01 do without it."""
    (tmp_path / "probe.py").write_text("import sys\ndef probe(line):\n    return str('numpy' in sys.modules)\n")
    config = tmp_path / "probe.json"
    config.write_text(
        json.dumps(
            {
                "processors": [
                    {"type": "tag_extractor", "id": "tags"},
                    {"type": "python", "id": "probe", "function": "probe:probe"},
                ]
            }
        )
    )
    log, out = make_log(20_000), tmp_path / "out.txt"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            "-c",
            str(config),
            "-w",
            str(workers),
            "-q",
            "-o",
            str(out),
            "--trace",
        ],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert set(out.read_text().splitlines()) == {"False"}


def test_the_command_ends_fast_but_runs_what_atexit_holds(tmp_path: Path, make_log: Any) -> None:
    """`mpobs process` skips the interpreter's teardown at its end (os._exit), yet an atexit handler of a user
    module (imported by the coordinator with the config) runs, and stdout and stderr are flushed whole."""
    (tmp_path / "exitfns.py").write_text(
        "import atexit, os\n"
        "atexit.register(lambda: open(os.environ['MARK'], 'a').write(f'{os.getpid()}\\n'))\n"
        "def same(line):\n    return line\n"
    )
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"processors": [{"type": "python", "id": "same", "function": "exitfns:same"}]}))
    log = make_log(30_000)
    mark = tmp_path / "mark"
    env = dict(os.environ, MARK=str(mark), PYTHONPATH=str(tmp_path))
    res = subprocess.run(
        [sys.executable, "-m", "mpobs", "process", str(log), "-c", str(config), "-w", "2"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == log.read_bytes() and b"done: 30,000 lines" in res.stderr
    assert len(mark.read_text().split()) == 1  # the coordinator's; workers end without atexit, as before
