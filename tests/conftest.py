"""Shared fixtures: worker counts, running the real CLI, and checks that nothing is left behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli, shm_segments
from tests.shared_procs import SHARED_PIDS

#: Every process the tests started (subprocess.Popen) in this session.
STARTED: set[int] = set()


@pytest.fixture(scope="session", autouse=True)
def started_processes() -> Iterator[set[int]]:
    """Records the pid of every process a test starts, so that leftovers are judged by the session's own:
    another suite on the same machine (another checkout's, killing its runs) leaves segments too."""
    init = subprocess.Popen.__init__

    def recording(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        STARTED.add(self.pid)

    subprocess.Popen.__init__ = recording  # type: ignore[method-assign]
    try:
        yield STARTED
    finally:
        subprocess.Popen.__init__ = init  # type: ignore[method-assign]


def orphaned_segments() -> set[str]:
    """Segments whose owner is a process the session started and is gone: leaked. (A live owner may be a run
    in progress.) A run's grandchild (``bash -c "mpobs ..."``) is not judged: its pid is never seen here."""
    import psutil

    owners = {n: int(n.split("_")[1]) for n in shm_segments()}
    return {n for n, pid in owners.items() if pid in STARTED and not psutil.pid_exists(pid)}


def own_segments() -> set[str]:
    """Segments named after this process: an in-process run (the harness, a Coordinator) unlinks its own
    before it returns, so one that is still there after the test is leaked."""
    return {n for n in shm_segments() if n.split("_")[1] == str(os.getpid())}


def _is_ours(proc: Any) -> bool:
    """A live child that is not multiprocessing's resource tracker (it lives as long as pytest), nor shared."""
    import psutil

    try:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if proc.pid in SHARED_PIDS or any(p.pid in SHARED_PIDS for p in proc.parents()):
            return False
        return not any("resource_tracker" in part for part in proc.cmdline())
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_leftovers() -> Any:
    """Every test must leave no shared-memory segment and no child process behind."""
    import psutil

    before = orphaned_segments() | own_segments()
    yield
    me = psutil.Process()
    children = [c for c in me.children(recursive=True) if _is_ours(c)]
    leaked = (orphaned_segments() | own_segments()) - before
    assert not children, f"processes left running: {[(c.pid, c.name()) for c in children]}"
    assert not leaked, f"shared memory left in /dev/shm: {sorted(leaked)}"


@pytest.fixture(params=[1, 2, 3], ids=lambda w: f"workers{w}")
def workers(request: pytest.FixtureRequest) -> int:
    """Every pipeline test runs with 1, 2 and 3 workers and must give the same answer."""
    return request.param


@pytest.fixture(params=[1, 2], ids=lambda w: f"workers{w}")
def fault_workers(request: pytest.FixtureRequest) -> int:
    """Fault tests (slow: each disturbs a real run) run with one worker and with two."""
    return request.param


@pytest.fixture
def cli() -> Any:
    """``cli("process", "in.log", ...)`` runs the real command line in a subprocess."""
    return run_cli


@pytest.fixture
def make_log(tmp_path: Path) -> Any:
    """``make_log(lines, seed=1, awkward=0.0)`` writes a generated log and returns its path."""
    from mpobs.inputs.loggen import generate_file

    def make(lines: int, seed: int = 1, awkward: float = 0.0, name: str = "in.log") -> Path:
        path = tmp_path / name
        generate_file(str(path), lines, seed=seed, awkward=awkward)
        return path

    return make
