"""The Dask executor against the local pool: the same output, counts, traces and errors, through faults.

Real Dask: ``--executor dask`` starts its own LocalCluster (worker processes), and a cluster
started from the command line (``dask scheduler`` and two ``dask worker`` on 127.0.0.1) is
shared by the tests that drive it with ``--scheduler``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.dask_faults import PLAN_ENV
from tests.handshake import WAIT_FOR_FILE
from tests.helpers import fn_config, free_port, get_json, saved_traces, wait_for, write_dag
from tests.shared_procs import SHARED_PIDS

pytest.importorskip("distributed", reason="needs Dask distributed (pip install 'mpobs[dask]')")
pytestmark = pytest.mark.dask

DASK = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"
SLOW_FNS = "import time\ndef slow(lines):\n    time.sleep(0.05)\n    return lines\n"
HOLD = "HOLD-HERE"


def held_slow_fns(gate: Path, delay: float = 0.05) -> str:
    """SLOW_FNS (``delay`` s a batch), and a batch holding a line marked HOLD-HERE (``hold_at``) waits until the
    test creates ``gate``: that task cannot end before the test has seen what it looks for. (The path is
    in the source: the workers of a cluster started earlier do not have the test's environment.)"""
    return (
        WAIT_FOR_FILE
        + f"""
import time
def slow(lines):
    time.sleep({delay})
    if any({HOLD!r} in line for line in lines):
        _wait_for_file({str(gate)!r})
    return lines
"""
    )


def hold_at(log: Path, *line_numbers: int) -> Path:
    """Mark lines ``line_numbers`` (1-based) of ``log`` with HOLD-HERE, for ``held_slow_fns``."""
    lines = log.read_bytes().split(b"\n")
    for n in line_numbers:
        lines[n - 1] = HOLD.encode() + b" " + lines[n - 1]
    log.write_bytes(b"\n".join(lines))
    return log


COUNTS = ("lines_in", "lines_out", "errors", "batches")


class CliCluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, started and stopped by the tests.

    The workers load tests/dask_faults.py: a test that writes a plan to ``plan`` has one die on cue.
    """

    def __init__(self, folder: Path, workers: int = 2) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.folder = folder
        self.plan = folder / "faults" / "plan.json"
        self.plan.parent.mkdir()
        self.scheduler = self._start(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dashboard-address",
                "127.0.0.1:0",
                "--no-show",
            ]
        )
        self.workers = [self.add_worker() for _ in range(workers)]
        self.wait_for_workers(workers)

    def _start(self, cmd: list[str], prefix: list[str] = ()) -> subprocess.Popen[bytes]:  # type: ignore[assignment]
        log = open(self.folder / f"{len(list(self.folder.iterdir()))}.log", "wb")  # noqa: SIM115 - closed with it
        proc = subprocess.Popen(
            [*prefix, *cmd],
            stdout=log,
            stderr=log,
            cwd=self.folder,
            start_new_session=True,
            env={**os.environ, PLAN_ENV: str(self.plan)},
        )
        log.close()
        SHARED_PIDS.add(proc.pid)
        return proc

    def add_worker(self, prefix: list[str] = ()) -> subprocess.Popen[bytes]:  # type: ignore[assignment]
        return self._start(
            [
                DASK,
                "worker",
                self.address,
                "--nthreads",
                "1",
                "--memory-limit",
                "0",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--preload",
                str(FAULTS),
            ],
            prefix,
        )

    def wait_for_workers(self, n: int) -> None:
        code = (
            "import sys; from distributed import Client\n"
            f"c = Client({self.address!r}, timeout=30); c.wait_for_workers({n}, timeout=60); c.close()"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)

    def worker_processes(self) -> list[psutil.Process]:
        """The processes running tasks: each ``dask worker``'s nanny's child."""
        out = []
        for w in self.workers:
            try:
                out += [c for c in psutil.Process(w.pid).children(recursive=True) if "python" in c.name()]
            except psutil.NoSuchProcess:
                pass
        return out

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            SHARED_PIDS.discard(proc.pid)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliCluster]:
    c = CliCluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        yield c
    finally:
        c.stop()


def run(*args: str, timeout: float = 180, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mpobs", "process", *args], capture_output=True, timeout=timeout, **kw)


def comparable(m: dict[str, Any], tasks: bool = True) -> dict[str, Any]:
    """What must be equal; ``tasks=False``: not how lines fell into tasks and batches (a pipe's
    blocks are cut where it paused, which no two runs share)."""
    s = m["system"]
    counts = COUNTS if tasks else ("lines_in", "lines_out", "errors")
    return {
        "processors": {p: {k: row[k] for k in counts} for p, row in m["processors"].items()},
        "tags": m["tags"],
        "counters": m["counters"],
        "errors_by_type": m["errors_by_type"],
        "system": {
            k: s[k] for k in ("total_lines", "bytes_done", "total_errors", "state") + (("tasks_done",) if tasks else ())
        },
        "inputs": [{k: i[k] for k in ("name", "lines", "lines_done", "state")} for i in m["inputs"]],
    }


def errors(m: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted((e["line_number"], e["processor"], e["error_type"], e["message"]) for e in m["recent_errors"])


def dag_log(make_log: Any) -> Path:
    log = make_log(30_000, awkward=0.01)
    log.write_bytes(log.read_bytes() + b"x WARN explode\nx WARN dup me\nERROR [api] user login failed\n")
    return log


def both(
    tmp_path: Path,
    inputs: list[str],
    workers: int,
    *dask_args: str,
    stdin: bytes | None = None,
    extra: tuple[str, ...] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same run on the local pool and on Dask; asserts identical output, counts, traces and errors."""
    config = write_dag(tmp_path)
    got: dict[str, dict[str, Any]] = {}
    for name, how in (("local", ()), ("dask", dask_args)):
        out, m, t = tmp_path / f"{name}.out", tmp_path / f"{name}.json", tmp_path / f"{name}.jsonl"
        res = run(
            *inputs,
            "-c",
            str(config),
            "-w",
            str(workers),
            "-q",
            "-o",
            str(out),
            "--save-metrics",
            str(m),
            "--trace-sample",
            "0.01",
            "--save-traces",
            str(t),
            "--task-size",
            "65536",
            *extra,
            *how,
            input=stdin,
        )
        assert res.returncode == 0, res.stderr.decode()
        got[name] = json.loads(m.read_text())
    assert (tmp_path / "dask.out").read_bytes() == (tmp_path / "local.out").read_bytes()
    assert comparable(got["dask"], stdin is None) == comparable(got["local"], stdin is None)
    assert saved_traces(tmp_path / "dask.jsonl") == saved_traces(tmp_path / "local.jsonl")
    assert errors(got["dask"]) == errors(got["local"]) and got["local"]["system"]["total_errors"] > 0
    assert got["dask"]["meta"]["executor"] == "dask" and got["local"]["meta"]["executor"] == "local"
    return got["local"], got["dask"]


@pytest.mark.parametrize("workers", [1, 2], ids=lambda w: f"workers{w}")
def test_a_local_cluster_gives_the_local_pools_answer(tmp_path: Path, make_log: Any, workers: int) -> None:
    both(tmp_path, [str(dag_log(make_log))], workers, "--executor", "dask")


def test_a_cluster_started_from_the_command_line_gives_the_same_answer(
    tmp_path: Path, make_log: Any, cluster: CliCluster
) -> None:
    both(tmp_path, [str(dag_log(make_log))], 2, "--scheduler", cluster.address)


def test_the_scheduler_from_the_environment(tmp_path: Path, make_log: Any, cluster: CliCluster) -> None:
    log = make_log(2000)
    res = run(
        str(log),
        "--executor",
        "dask",
        "-o",
        str(tmp_path / "out"),
        "--save-metrics",
        str(tmp_path / "m.json"),
        env={**os.environ, "MPOBS_DASK_SCHEDULER": cluster.address},
    )
    assert res.returncode == 0, res.stderr.decode()
    assert "on 2 Dask worker thread(s)" in res.stderr.decode()  # the summary says which executor ran
    assert json.loads((tmp_path / "m.json").read_text())["system"]["total_lines"] == 2000


def test_streams_and_compressed_inputs_are_shipped_as_blocks(
    tmp_path: Path, make_log: Any, cluster: CliCluster
) -> None:
    import gzip

    log = dag_log(make_log)
    gz = tmp_path / "in.log.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    both(tmp_path, ["-", str(gz)], 2, "--scheduler", cluster.address, stdin=log.read_bytes())


FAULTS = Path(__file__).with_name("dask_faults.py")
#: Every moment a Dask worker can go away (tests/dask_faults.py), as (stage, task, delay in s).
STAGES = [
    ("probing", 0, 0.0),
    ("running", 3, 0.05),
    ("finished", 4, 0.0),
    ("gathering", 5, 0.0),
    ("behind", 4, 2.0),
    ("between", 5, 0.0),
    ("restart", 5, 0.05),
]


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, dict[str, Any]]:
    """A run of about 45 tasks of 0.1 s each: its arguments, and the local pool's output and counts."""
    from mpobs.inputs.loggen import generate_file

    folder = tmp_path_factory.mktemp("slow-job")
    log = folder / "in.log"
    generate_file(str(log), 40_000, seed=1)
    config = fn_config(
        folder,
        "daskslow",
        SLOW_FNS,
        [
            {"type": "python", "id": "slow", "function": "daskslow:slow", "batch": True},
            {"type": "line_counter", "id": "n", "format": "{count}|{line}"},
        ],
    )
    common = [str(log), "-c", str(config), "-q", "-w", "2", "--task-size", "65536", "--batch-lines", "500"]
    ref = run(*common, "-o", str(folder / "ref"), "--save-metrics", str(folder / "ref.json"))
    assert ref.returncode == 0, ref.stderr.decode()
    return common, folder / "ref", json.loads((folder / "ref.json").read_text())


def faulty_runs(
    tmp_path: Path,
    slow_job: Any,
    how: list[str],
    plan: Path,
    env: dict[str, str],
    stages: list[tuple[str, int, float]] = STAGES,
) -> list[str]:
    """The slow job on Dask (``how``) once per stage of ``stages``, a worker dying there; asserts every run is
    exact (the local pool's output and counts) and that the worker died; returns the runs' stderr."""
    common, ref, ref_metrics = slow_job
    said = []
    for stage, task, delay in stages:
        for old in plan.parent.glob(plan.name + "*"):
            old.unlink()
        plan.write_text(json.dumps({"stage": stage, "task": task, "delay": delay}))
        out, m = tmp_path / f"{stage}-{task}.out", tmp_path / f"{stage}-{task}.json"
        res = run(*common, "-o", str(out), "--save-metrics", str(m), *how, env={**os.environ, **env})
        err = res.stderr.decode()
        assert res.returncode == 0, f"{stage} {task} {delay}: {err}"
        assert "NoneType" not in err and "Traceback" not in err, err
        assert Path(f"{plan}.killed-0").exists(), f"{stage} {task}: no worker died"
        assert out.read_bytes() == ref.read_bytes(), f"{stage} {task}"
        assert comparable(json.loads(m.read_text())) == comparable(ref_metrics), f"{stage} {task}"
        said.append(err)
    plan.unlink()
    return said


def test_a_dask_worker_that_goes_away_at_any_moment_loses_nothing(
    tmp_path: Path, slow_job: Any, cluster: CliCluster
) -> None:
    """A worker of a cluster of our own dies while running a task, after finishing it, while its result
    is fetched, while another result is fetched, between tasks, and while its nanny restarts it: every
    run exits 0 with the local pool's output and counts."""
    faulty_runs(tmp_path, slow_job, ["--scheduler", cluster.address], cluster.plan, {})
    cluster.wait_for_workers(2)  # its nanny started it again: the next tests have both


def test_a_local_cluster_worker_that_goes_away_at_any_moment_loses_nothing(tmp_path: Path, slow_job: Any) -> None:
    """On a LocalCluster the workers write each task's output to a part file: a worker that dies at any
    moment (a part half written, a part written and not yet joined) still gives exactly the local pool's
    output and counts."""
    plan = tmp_path / "plan.json"
    env = {"DASK_DISTRIBUTED__WORKER__PRELOAD": json.dumps([str(FAULTS)]), PLAN_ENV: str(plan)}
    # The moments that differ on a LocalCluster (part files, its own nannies); each run starts a cluster.
    local = [st for st in STAGES if st[0] in ("running", "finished", "behind", "restart")]
    faulty_runs(tmp_path, slow_job, ["--executor", "dask"], plan, env, local)


def test_a_worker_that_cannot_see_the_input_is_named(tmp_path: Path, make_log: Any) -> None:
    """One worker in a mount namespace of its own, with an empty tmpfs over the input's folder: exit 2 naming it."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and unshare(1) for a worker with another view of the files")
    folder = tmp_path / "shared"
    folder.mkdir()
    log = folder / "in.log"
    log.write_text("INFO a\n" * 100)
    (tmp_path / "cluster-files").mkdir()
    c = CliCluster(tmp_path / "cluster-files", workers=1)
    try:
        hidden = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount -t tmpfs tmpfs {folder} && exec "$0" "$@"',
        ]
        c.workers.append(c.add_worker(hidden))
        c.wait_for_workers(2)
        res = run(str(log), "--scheduler", c.address, "-o", str(tmp_path / "out"), timeout=60)
    finally:
        c.stop()
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "Dask worker tcp://127.0.0.1:" in err and f"cannot read the input {str(log)!r}" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_exit_2_within_10_s(tmp_path: Path, make_log: Any) -> None:
    log = make_log(100)
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    res = run(str(log), "--scheduler", address, "-o", str(tmp_path / "out"), timeout=60)
    took = time.monotonic() - t0
    err = res.stderr.decode()
    assert res.returncode == 2 and f"cannot reach the Dask scheduler at {address}" in err, err
    # 10 s to connect, plus the interpreter and Dask's imports, which a busy machine can make take
    # seconds; Dask's own connect timeout (30 s) would still be caught.
    assert took < 25, took


def test_without_dask_installed_the_dask_executor_says_how_to_install_it(tmp_path: Path, make_log: Any) -> None:
    log = make_log(100)
    code = (
        "import sys; sys.modules['distributed'] = None\nfrom mpobs.__main__ import main; sys.argv[0] = 'mpobs'; main()"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "process", str(log), "--executor", "dask"], capture_output=True, timeout=60
    )
    assert res.returncode == 2, res.stderr.decode()
    assert "pip install 'mpobs[dask]'" in res.stderr.decode()


def test_the_scheduler_going_away_fails_the_run_with_exit_1(tmp_path: Path, make_log: Any) -> None:
    log = hold_at(make_log(40_000), 20_000)  # the run is still going when the scheduler goes
    gate = tmp_path / "gate"
    config = fn_config(
        tmp_path,
        "daskslow2",
        held_slow_fns(gate),
        [{"type": "python", "id": "slow", "function": "daskslow2:slow", "batch": True}],
    )
    (tmp_path / "c").mkdir()
    c = CliCluster(tmp_path / "c", workers=1)
    out = tmp_path / "out"
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mpobs",
                "process",
                str(log),
                "-c",
                str(config),
                "-q",
                "--task-size",
                "65536",
                "--batch-lines",
                "500",
                "-o",
                str(out),
                "--scheduler",
                c.address,
            ],
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: out.exists() and out.stat().st_size > 0, 60)
        c.scheduler.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        gate.touch()  # the worker's held task returns: the cluster stops at once
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        c.stop()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "lost the Dask scheduler" in text and "Traceback" not in text, text


def test_ctrl_c_cancels_closes_the_cluster_and_exits_130(tmp_path: Path, make_log: Any) -> None:
    log = hold_at(make_log(40_000), 20_000)  # the run is still going when Ctrl-C comes
    gate = tmp_path / "gate"
    config = fn_config(
        tmp_path,
        "daskslow3",
        held_slow_fns(gate),
        [{"type": "python", "id": "slow", "function": "daskslow3:slow", "batch": True}],
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(log),
            "-c",
            str(config),
            "-q",
            "-w",
            "2",
            "--task-size",
            "65536",
            "--batch-lines",
            "500",
            "-o",
            str(out),
            "--executor",
            "dask",
        ],
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: out.exists() and out.stat().st_size > 0, 60)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 2  # the LocalCluster's worker processes (and their nannies)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        _, err = proc.communicate(timeout=60)
    finally:
        gate.touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode(), err.decode()
    wait_for(lambda: not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 30)


def watched_dashboard_run(args: list[str], watch: Any, gate: Path, timeout: float = 60) -> tuple[Any, str]:
    """``mpobs process ARGS --dashboard``: what ``watch(stats)`` returned first that was truthy while it ran, and its
    stderr. The run's held task (``held_slow_fns``) goes on once the watch has seen it: ``gate`` is made then."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            *args,
            "--dashboard",
            "--dashboard-port",
            str(port),
            "--linger",
            "0",
        ],
        stderr=subprocess.PIPE,
    )

    def seen() -> Any:
        try:
            code, doc = get_json(f"http://127.0.0.1:{port}/stats")
        except OSError:
            return None
        return watch(doc) if code == 200 else None

    try:
        got = wait_for(seen, timeout)
        gate.touch()
        _, err = proc.communicate(timeout=120)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes its stderr pipe, also when the watch failed
    assert proc.returncode == 0, err.decode()
    return got, err.decode()


def test_stats_and_saved_metrics_show_the_dask_workers(tmp_path: Path, make_log: Any) -> None:
    """/stats (and --save-metrics) carry the cluster's workers: address, tasks and lines each ran for
    us, CPU and memory as its scheduler sees them, and a link to Dask's own dashboard."""
    # A task near the end waits until the watch has seen the cluster busy: the run is still going then.
    log = hold_at(make_log(20_000), 18_000)
    gate = tmp_path / "gate"
    config = fn_config(
        tmp_path,
        "daskslow4",
        held_slow_fns(gate),
        [{"type": "python", "id": "slow", "function": "daskslow4:slow", "batch": True}],
    )
    m = tmp_path / "m.json"

    def busy_cluster(doc: dict[str, Any]) -> Any:
        ex = doc.get("executor")
        return ex if ex and len(ex["workers"]) == 2 and sum(w["tasks"] for w in ex["workers"]) > 0 else None

    ex, _ = watched_dashboard_run(
        [
            str(log),
            "-c",
            str(config),
            "-q",
            "-w",
            "2",
            "--task-size",
            "65536",
            "--batch-lines",
            "500",
            "-o",
            str(tmp_path / "out"),
            "--executor",
            "dask",
            "--save-metrics",
            str(m),
        ],
        busy_cluster,
        gate,
    )
    assert (
        ex["name"] == "dask" and ex["scheduler"] == "LocalCluster" and ex["dashboard"].startswith("http://127.0.0.1:")
    )
    assert all(w["address"].startswith("tcp://127.0.0.1:") and w["rss_bytes"] > 0 for w in ex["workers"])
    final = json.loads(m.read_text())
    workers = final["executor"]["workers"]
    assert sum(w["tasks"] for w in workers) == final["system"]["tasks_done"]
    assert sum(w["lines"] for w in workers) == final["system"]["total_lines"] == 20_000


def test_a_running_task_shows_its_counts_before_it_is_done(tmp_path: Path, make_log: Any) -> None:
    """Live progress: tasks of a few seconds each show their lines in /stats while they run (no task is
    done yet); when the run ends, the counts are exact (what was shown live never counts twice)."""
    # Each task waits half way (lines 2,000 and 6,000: after 19 batches, 0.05 s each, so past the
    # first live report at 0.5 s) until the watch has seen it: no task can be done by then.
    log = hold_at(make_log(8_000), 2_000, 6_000)
    gate = tmp_path / "gate"
    config = fn_config(
        tmp_path,
        "daskslow5",
        held_slow_fns(gate),
        [{"type": "python", "id": "slow", "function": "daskslow5:slow", "batch": True}],
    )
    m = tmp_path / "m.json"

    def running_and_counted(doc: dict[str, Any]) -> Any:
        seen = doc["processors"]["slow"]["lines_in"]
        return seen if doc["system"]["tasks_done"] == 0 and 0 < seen < 8_000 else None

    # Two tasks (one per worker) of 40 batches of 100 lines.
    seen, _ = watched_dashboard_run(
        [
            str(log),
            "-c",
            str(config),
            "-q",
            "-w",
            "2",
            "--task-size",
            str(log.stat().st_size // 2 + 1),
            "--batch-lines",
            "100",
            "-o",
            str(tmp_path / "out"),
            "--executor",
            "dask",
            "--save-metrics",
            str(m),
        ],
        running_and_counted,
        gate,
    )
    assert seen % 100 == 0  # whole batches
    final = json.loads(m.read_text())
    assert final["processors"]["slow"]["lines_in"] == final["system"]["total_lines"] == 8_000
