"""Handshakes between a test and the user functions its runs call, instead of sleeps.

A function that must hold a task (so that the test can look at, signal or kill the run
while it is held) waits for a file the test creates; a function that must let the test
know it got somewhere writes a marker file. Nothing here depends on how fast the machine is.

``WAIT_FOR_FILE`` is source text, put into the modules of user functions the tests write
(``fn_config``): those run in the workers, which do not import the tests.
"""

from __future__ import annotations

from pathlib import Path

WAIT_FOR_FILE = '''
def _wait_for_file(path, limit=60.0):
    """Until the test creates ``path``; after ``limit`` s go on anyway, so that a test that failed
    half-way never leaves a worker waiting for ever."""
    import os as _os, time as _time
    deadline = _time.monotonic() + limit
    while not _os.path.exists(path) and _time.monotonic() < deadline:
        _time.sleep(0.01)
'''

#: A batch function for the default pipeline (after its line counter, lines read "Line N: ..."):
#: 10 ms a batch, and when ``GATE_AT`` is set, every batch from line GATE_AT on waits until the
#: file ``GATE_OPEN`` exists. The run can then not end before the test has done what it must do
#: part way (signal it, kill it or a worker), however slow the machine is.
GATED_SLOW_FNS = (
    WAIT_FOR_FILE
    + """
def slow(lines):
    import os, time
    time.sleep({delay})
    at = os.environ.get("GATE_AT")
    if at and lines and int(lines[-1].split(":", 1)[0][5:]) >= int(at):
        _wait_for_file(os.environ["GATE_OPEN"])
    return lines
"""
)


def gate_env(gate_at: int, gate_open: Path) -> dict[str, str]:
    """The environment making GATED_SLOW_FNS hold every batch from line ``gate_at`` on until ``gate_open`` exists."""
    return {"GATE_AT": str(gate_at), "GATE_OPEN": str(gate_open)}


def pipe_pending(fd: int) -> int:
    """Bytes written into the pipe of ``fd`` that nobody has read yet."""
    import fcntl
    import struct
    import termios

    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def pipe_is_full(fd: int) -> bool:
    """Whether the pipe of ``fd`` holds all it can: its writer blocks until someone reads."""
    import fcntl

    return pipe_pending(fd) >= fcntl.fcntl(fd, 1032)  # F_GETPIPE_SZ


def run_is_asleep(pid: int, workers: int) -> bool:
    """Whether process ``pid`` and its ``workers`` worker processes are all asleep (blocked), twice 0.05 s apart
    with no CPU time spent in between: a process still working, or only waiting for a CPU, is not."""
    import time

    import psutil

    def look() -> tuple[float, ...] | None:
        try:
            root = psutil.Process(pid)
            family = [root] + [c for c in root.children() if not any("resource_tracker" in a for a in c.cmdline())]
            if len(family) != workers + 1 or any(p.status() != psutil.STATUS_SLEEPING for p in family):
                return None
            return tuple(sum(p.cpu_times()[:2]) for p in family)
        except psutil.NoSuchProcess:
            return None

    first = look()
    time.sleep(0.05)
    return first is not None and look() == first
