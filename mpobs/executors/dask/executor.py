"""The Dask executor: the run's tasks on a Dask distributed cluster, with the local pool's exact numbers.

``--executor dask`` starts a ``distributed.LocalCluster`` of ``--workers`` processes
(one thread each, no memory limit: a task's memory is bounded by its size, and the
nanny's pausing and restarting would only stall or kill a run); ``--scheduler ADDRESS``
(or ``MPOBS_DASK_SCHEDULER``) uses a running cluster instead.

The Dask client lives in a process of its own (``mpobs.executors.dask.bridge``; the messages
between it and this module: ``mpobs.executors.dask.messages``); this module, in the
coordinator, never imports distributed, so the coordinator stays the size of a local run's.

What goes where: a plain file is read by the Dask workers themselves, by byte range (it
must be at the same path on every worker: a shared file system); blocks of a stream,
standard input or a compressed file are decoded here and shipped with their task. The
pipeline travels as its config (``PipelineSpec``) and is built once per worker. Each
task returns its count vector, counters, traces and error records, and its output: as
bytes, or, on a LocalCluster (this machine), as a part file its worker wrote, which the
ordered output joins without the bytes passing through Dask. The coordinator commits
them when the task is in the output, as for the local pool, so a task whose worker
died (and that Dask reports lost, ``KilledWorker``) never counts twice: it is planned
again by the scheduler, which gives up after three deaths with the local pool's
message. Tasks are big (Dask costs 1-2 ms per task) and few are in flight. While a task
runs, its counts so far arrive twice a second and are shown in an in-flight row of the
stats segment (live totals only: a lost task's row is zeroed).

Before any work a probe runs on every worker: it sees each input file (same size, same
first bytes) and builds the pipeline (its Python functions import there); a worker that
cannot is named and the run refused (exit 2).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from mpobs.errors import InputError
from mpobs.executors.base import Event, Executor, RunContext, TaskDone, TaskLost, WorkerFailed
from mpobs.executors.dask.bridge import INSTALL_HINT
from mpobs.executors.dask.messages import (
    Close,
    Connect,
    Connected,
    Ended,
    Failed,
    Probe,
    Probed,
    Progress,
    Refused,
    Start,
    Submit,
    ToBridge,
    ToExecutor,
    Workers,
)
from mpobs.executors.dask.remote import head_hash
from mpobs.executors.parts import make_part_dir, part_path
from mpobs.inputs.base import Task

#: Tasks in flight per worker thread: one running, one waiting (its bytes already there).
IN_FLIGHT_PER_THREAD = 2
#: Seconds to wait for the client process to start a LocalCluster (or to give up reaching a scheduler).
START_TIMEOUT = 120
#: Seconds the client process has to cancel, close its cluster and exit.
CLOSE_TIMEOUT = 30
SCHEDULER_ENV = "MPOBS_DASK_SCHEDULER"

_Reply = TypeVar("_Reply", Connected, Probed)


def _installed() -> bool:
    try:
        return importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):
        return False


class DaskExecutor(Executor):
    """Runs tasks as Dask futures, through the client process.

    ``connect`` first (the CLI does), so that ``capacity`` is known.
    """

    name = "dask"

    def __init__(self, workers: int, scheduler: str | None = None) -> None:
        self.n = max(1, workers)
        self.address = scheduler
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Connection | None = None
        self.status = "running"  # the Dask client's, as the client process last said
        self.threads = self.n
        self.tasks: dict[str, tuple[Task, int]] = {}  # key -> (the task as planned, its in-flight row)
        self.live: dict[str, list[int]] = {}  # key -> its counts so far, as in its row
        self.free_rows: list[int] = []
        self.part_dir: str | None = None  # a LocalCluster's workers write each task's output here
        self._attempts: dict[int, int] = {}
        self.by_worker: dict[str, list[int]] = {}  # address -> [tasks, lines] of its results taken
        self.cluster_workers: dict[str, dict[str, Any]] = {}  # address -> its scheduler's view
        self.dashboard_link: str | None = None
        self._events: list[Event] = []

    # -- the client process ---------------------------------------------------------
    def connect(self) -> None:
        """Start the client process, and in it a LocalCluster or a client of ``address``.

        InputError (exit 2) if it cannot.
        """
        if not _installed():
            raise InputError(INSTALL_HINT)
        ours, theirs = socket.socketpair()
        # Ctrl-C reaches the whole foreground process group: the client process (and the
        # LocalCluster's workers it starts) begin with SIGINT, SIGTERM and SIGHUP ignored
        # (kept across exec), so that the run decides what stops.
        with theirs, _ignoring(signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mpobs.executors.dask.bridge", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
            )
        self.conn = Connection(ours.detach())
        self._send(Connect(self.n, self.address))
        reply = self._wait_for(Connected, START_TIMEOUT)
        if isinstance(reply, Refused):
            self.close()
            raise InputError(reply.message)
        self.threads, self.dashboard_link = reply.threads, reply.dashboard_link
        self.free_rows = list(range(2, 2 + IN_FLIGHT_PER_THREAD * self.threads))

    def _send(self, msg: ToBridge) -> None:
        assert self.conn is not None
        self.conn.send(msg)

    def _wait_for(self, reply: type[_Reply], timeout: float) -> _Reply | Refused:
        """The client process's ``reply``, or its refusal (its failure, no answer in time: a ``Refused`` too)."""
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                return Refused(f"the Dask client process did not answer within {timeout} s")
            try:
                msg: ToExecutor = self.conn.recv()
            except (EOFError, OSError):
                return Refused(f"the Dask client process ended ({self._exit()})")
            if isinstance(msg, (reply, Refused)):
                return msg
            if isinstance(msg, Failed):
                return Refused(f"the Dask client failed: {msg.message}")
            if isinstance(msg, Workers):
                self._workers(msg.workers, msg.status)

    def _exit(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        return "still running" if code is None else f"exit code {code}"

    @property
    def capacity(self) -> int:
        return self.threads

    # -- running tasks ------------------------------------------------------------
    def prepare(self, pipeline: Any, files: list[str]) -> None:
        if self.conn is None:
            self.connect()
        want = {path: list(head_hash(path)) for path in files}
        self._send(Probe(files, pipeline.spec))
        reply = self._wait_for(Probed, START_TIMEOUT)
        if isinstance(reply, Refused):
            raise InputError(reply.message)
        check_probes(reply.answers, want)

    def start(self, ctx: RunContext) -> None:
        self.ctx = ctx
        if self.address is None:
            # Workers on this machine write each task's output to a part file, which the ordered
            # output joins (the kernel copying): the output never travels through Dask. Measured on
            # a 6M-line run (2 cores): 5.3 s shipping bytes, 4.0 s with outputs held on the workers
            # and written there when placed, 3.4 s with part files.
            self.part_dir = make_part_dir()
        self._send(Start(ctx.pipeline.spec, ctx.segment.layout, ctx.settings, self.part_dir))

    def room(self) -> int:
        return IN_FLIGHT_PER_THREAD * self.threads - len(self.tasks)

    def submit(self, task: Task) -> None:
        shipped = task
        if task.path is None and task.data is None:  # a block: its bytes travel with it
            assert self.ctx.store is not None
            shipped = task._replace(data=bytes(self.ctx.store.get(task.slot, task.end - task.start)), slot=-1)
        attempt = self._attempts.get(task.index, 0)
        self._attempts[task.index] = attempt + 1
        key = f"mpobs-task-{task.index}-{attempt}-{os.getpid()}"
        # A run lost part way may leave its part: the next run of the task writes its own.
        part = part_path(self.part_dir, task.index, attempt) if self.part_dir else None
        self.tasks[key] = (task, self.free_rows.pop())
        self._send(Submit(key, shipped, part))

    def poll(self, timeout: float, wake: Sequence[int] = ()) -> list[Event]:
        if self.conn is None:
            return [WorkerFailed("", f"the Dask client process ended ({self._exit()})")]
        if not self._events:
            select.select([self.conn.fileno(), *wake], [], [], timeout)
        try:
            while self.conn.poll(0):
                self._take(self.conn.recv())
        except (EOFError, OSError):
            self._events.append(WorkerFailed("", f"the Dask client process ended ({self._exit()})"))
            self.conn = None
        events, self._events = self._events, []
        if not events and self.tasks and self.status not in ("running", "connecting"):
            return [WorkerFailed("", f"lost the Dask scheduler at {self.where} (the client is {self.status})")]
        return events

    def _take(self, msg: ToExecutor) -> None:
        match msg:
            case Ended(key=key, kind=kind, payload=payload):
                if key in self.tasks:
                    task, row = self.tasks.pop(key)
                    self._forget_live(key, row)
                    self.free_rows.append(row)
                    self._events.append(self._event(task, kind, payload))
            case Progress(key=key, counts=counts):
                if key in self.tasks:
                    old = self.live.setdefault(key, [0] * len(counts))
                    self.ctx.segment.flush(self.tasks[key][1], [n - o for n, o in zip(counts, old)])
                    self.live[key] = counts
            case Workers(workers=workers, status=status):
                self._workers(workers, status)
            case Failed(message=message):
                self._events.append(WorkerFailed("", f"the Dask client failed: {message}"))

    def _forget_live(self, key: str, row: int) -> None:
        """A task's live counts leave its row: its result (or its next run) brings them."""
        old = self.live.pop(key, None)
        if old is not None:
            self.ctx.segment.flush(row, [-o for o in old])

    def _workers(self, workers: dict[str, dict[str, Any]], status: str) -> None:
        self.cluster_workers, self.status = workers, status

    @property
    def where(self) -> str:
        return self.address or "the LocalCluster"

    def _event(self, task: Task, kind: str, payload: Any) -> Event:
        if kind == "finished":
            result, worker = payload
            done = self.by_worker.setdefault(worker, [0, 0])
            done[0], done[1] = done[0] + 1, done[1] + result.lines
            return TaskDone(task, result)
        if kind == "cancelled":
            return WorkerFailed(
                "",
                f"lost the Dask scheduler at {self.where} (it went away, or was restarted) "
                f"while {task.describe()} ran; what is in the output is complete",
            )
        if kind == "killed":
            self.restarted += 1
            return TaskLost(task, f"its Dask worker {payload} died running it", fault=True)
        if kind == "lost":
            return TaskLost(task, payload)
        return WorkerFailed("dask", f"{task.describe()}: {payload}")

    def view(self) -> dict[str, Any] | None:
        """The cluster's workers as its scheduler sees them (CPU, memory), with the tasks each ran for us."""
        workers: list[dict[str, Any]] = []
        for address, w in sorted(self.cluster_workers.items()):
            tasks, lines = self.by_worker.get(address, (0, 0))
            workers.append(dict(address=address, **w, tasks=tasks, lines=lines))
        for address in sorted(a for a in self.by_worker if a not in self.cluster_workers):
            tasks, lines = self.by_worker[address]  # died or left: what they ran still shows
            workers.append(
                {
                    "address": address,
                    "name": "",
                    "nthreads": None,
                    "tasks": tasks,
                    "lines": lines,
                    "cpu_percent": None,
                    "rss_bytes": None,
                    "gone": True,
                }
            )
        return {
            "name": self.name,
            "scheduler": self.address or "LocalCluster",
            "dashboard": self.dashboard_link,
            "workers": workers,
        }

    def shutdown(self, graceful: bool) -> None:
        """Tell the client process to stop; it closes its cluster while the run finishes (``close`` waits for it)."""
        if self.conn is not None:
            for key, (_, row) in list(self.tasks.items()):
                self._forget_live(key, row)
        self.tasks.clear()
        self._hang_up()
        if self.part_dir:
            shutil.rmtree(self.part_dir, ignore_errors=True)  # parts of tasks lost or not joined

    def _hang_up(self) -> None:
        """Tell the client process to cancel what runs, close its client and cluster, and exit."""
        if self.conn is not None:
            try:
                self._send(Close())
            except OSError:
                pass  # it is gone already
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        """Stop the client process (if ``shutdown`` did not) and wait until it has closed its cluster and exited."""
        self._hang_up()
        if self.proc is not None:
            try:
                self.proc.wait(CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def check_probes(answers: dict[str, Any], want: dict[str, list[Any]]) -> None:
    """Every worker saw the input files as we do (``want``) and built the pipeline.

    InputError (exit 2) naming the first that did not.
    """
    for worker, got in sorted(answers.items()):
        for path, seen in got["files"].items():
            if isinstance(seen, str):
                raise InputError(
                    f"Dask worker {worker} cannot read the input {path!r}: {seen} (the input must be "
                    "at the same path on every worker: a shared file system)"
                )
            if seen != want[path]:
                raise InputError(
                    f"Dask worker {worker} sees another file at {path!r} ({seen[0]:,} bytes, not "
                    f"{want[path][0]:,}, or other first bytes): give every worker the same file"
                )
        if got["pipeline"] is not None:
            raise InputError(f"Dask worker {worker} cannot build the pipeline: {got['pipeline']}")


@contextlib.contextmanager
def _ignoring(*signals: int) -> Iterator[None]:
    try:
        old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    except ValueError:  # not the main thread: nothing to change
        old = {}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
