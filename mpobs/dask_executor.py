"""The Dask executor: the run's tasks on a Dask distributed cluster, with the local pool's exact numbers.

``--executor dask`` starts a ``distributed.LocalCluster`` of ``--workers`` processes
(one thread each, no memory limit: a task's memory is bounded by its size, and the
nanny's pausing and restarting would only stall or kill a run); ``--scheduler ADDRESS``
(or ``MPOBS_DASK_SCHEDULER``) uses a running cluster instead.

What goes where: a plain file is read by the Dask workers themselves, by byte range (it
must be at the same path on every worker: a shared file system); blocks of a stream,
standard input or a compressed file are decoded here and shipped with their task. The
pipeline travels as its config (``PipelineSpec``) and is built once per worker. Each
task returns its count vector, counters, traces and error records, and its output: as
bytes, or, on a LocalCluster (this machine), as a part file its worker wrote, which the
ordered output joins without the bytes passing through Dask. The
coordinator commits them when the task is in the output, as for the local pool, so a
task whose worker died (and that Dask reports lost, ``KilledWorker``) never counts
twice: it is planned again by the scheduler, which gives up after three deaths with the
local pool's message. Tasks are big (Dask costs 1-2 ms per task) and few are in flight.

Before any work a probe runs on every worker: it sees each input file (same size, same
first bytes) and builds the pipeline (its Python functions import there); a worker that
cannot is named and the run refused (exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import select
import shutil
import signal
import tempfile
import threading
from dataclasses import replace
from typing import Any, Iterator, Sequence

from mpobs.errors import InputError
from mpobs.executor import Event, Executor, RunContext, TaskDone, TaskLost, WorkerFailed
from mpobs.inputs import Task
from mpobs.pool import PARTS_PREFIX

#: Tasks in flight per worker thread: one running, one waiting (its bytes already there).
IN_FLIGHT_PER_THREAD = 2
#: Seconds to reach a scheduler given with --scheduler before giving up (exit 2).
CONNECT_TIMEOUT = 10
#: Bytes of each input file the probe compares (a hash of them).
PROBE_HEAD = 1 << 16
SCHEDULER_ENV = "MPOBS_DASK_SCHEDULER"
INSTALL_HINT = "the Dask executor needs Dask distributed: pip install 'mpobs[dask]'"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as err:
        raise InputError(INSTALL_HINT) from err
    return distributed


class DaskExecutor(Executor):
    """Runs tasks as Dask futures; ``connect`` first (the CLI does), so that ``capacity`` is known."""

    name = "dask"

    def __init__(self, workers: int, scheduler: str | None = None) -> None:
        self.n = max(1, workers)
        self.address = scheduler
        self.client: Any = None
        self.cluster: Any = None
        self.threads = self.n
        self.futures: dict[str, tuple[Task, Any]] = {}  # key -> (the task as planned, its future)
        self.part_dir: str | None = None  # a LocalCluster's workers write each task's output here
        self.done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()  # a finished future's callback wakes poll()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._attempts: dict[int, int] = {}
        self.by_worker: dict[str, list[int]] = {}  # address -> [tasks, lines] of its results taken
        self.dashboard_link: str | None = None
        self._last_view: dict[str, Any] | None = None

    # -- connecting ---------------------------------------------------------------
    def connect(self) -> None:
        """Start a LocalCluster, or reach the scheduler at ``address``; exit 2 (InputError) if it cannot be reached."""
        distributed = _distributed()
        _quiet_dask_logs()
        if self.address is None:
            import dask

            # A worker death is reported to us at once (KilledWorker), so that our scheduler
            # counts it: three deaths of one task fail the run, as with the local pool.
            # One task at a time on each worker thread, so that a death is blamed on the task it ran.
            dask.config.set({"distributed.scheduler.allowed-failures": 0,
                             "distributed.scheduler.worker-saturation": 1.0})
            # Dask's workers give freed memory back to the system at once (MALLOC_TRIM_THRESHOLD_
            # 64 KiB), so every 16 MiB task faulted its buffers in again: keeping them (and big
            # buffers on the heap, not in fresh mmaps) took a 6M-line run from 4.6-5.0 s to 4.2-4.3 s.
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 256 << 20,
                             "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 << 20})
            # Ctrl-C reaches the whole foreground process group: the workers start with SIGINT
            # and SIGTERM ignored (kept across exec), so that the run decides what stops.
            with _ignoring(signal.SIGINT, signal.SIGTERM):
                self.cluster = distributed.LocalCluster(
                    n_workers=self.n, threads_per_worker=1, processes=True, memory_limit=0, host="127.0.0.1",
                    dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL,
                )  # fmt: skip
            self.client = distributed.Client(self.cluster, set_as_default=False)
        else:
            try:
                self.client = distributed.Client(self.address, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError) as err:
                raise InputError(f"cannot reach the Dask scheduler at {self.address} within {CONNECT_TIMEOUT} s: "
                                 f"{err}") from None  # fmt: skip
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        if not workers:
            self.close()
            raise InputError(f"the Dask scheduler at {self.where} has no workers")
        self.threads = sum(w.get("nthreads", 1) for w in workers.values())
        self.dashboard_link = self.client.dashboard_link

    @property
    def capacity(self) -> int:
        return self.threads

    # -- running tasks ------------------------------------------------------------
    def prepare(self, pipeline: Any, files: list[str]) -> None:
        if self.client is None:
            self.connect()
        probe_files(self.client, files, pipeline.spec)

    def start(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.spec = ctx.pipeline.spec
        self.layout = ctx.segment.layout
        if self.cluster is not None:
            # Workers on this machine write each task's output to a part file, which the ordered
            # output joins (the kernel copying): the output never travels through Dask. Measured on
            # a 6M-line run (2 cores): 5.3 s shipping bytes, 4.0 s with outputs held on the workers
            # and written there when placed, 3.4 s with part files.
            self.part_dir = tempfile.mkdtemp(prefix=f"{PARTS_PREFIX}{os.getpid()}-")

    def room(self) -> int:
        return IN_FLIGHT_PER_THREAD * self.threads - len(self.futures)

    def submit(self, task: Task) -> None:
        shipped = task
        if task.path is None and task.data is None:  # a block: its bytes travel with it
            assert self.ctx.store is not None
            shipped = replace(task, data=bytes(self.ctx.store.get(task.slot, task.end - task.start)), slot=-1)
        attempt = self._attempts.get(task.index, 0)
        self._attempts[task.index] = attempt + 1
        key = f"mpobs-task-{task.index}-{attempt}-{os.getpid()}"
        args = (self.spec, self.layout, self.ctx.settings, shipped)
        # A run lost part way may leave its part: the next run of the task writes its own.
        part = os.path.join(self.part_dir, f"part-{task.index:09d}-{attempt}") if self.part_dir else None
        fut = self.client.submit(run_remote, *args, part, key=key, pure=False)
        self.futures[key] = (task, fut)
        fut.add_done_callback(self._finished)

    def _finished(self, fut: Any) -> None:
        """In a client thread: hand the future to ``poll``."""
        self.done.put(fut)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def poll(self, timeout: float, wake: Sequence[int] = ()) -> list[Event]:
        if self.done.empty():
            select.select([self._wake_r, *wake], [], [], timeout)
        try:
            os.read(self._wake_r, 1 << 16)
        except BlockingIOError:
            pass  # woken by ``wake``, or by the timeout
        events: list[Event] = []
        while True:
            try:
                fut = self.done.get_nowait()
            except queue.Empty:
                break
            entry = self.futures.pop(fut.key, None)
            if entry is not None:
                events.append(self._event(entry[0], fut))
        if not events and self.futures and self.client.status not in ("running", "connecting"):
            return [WorkerFailed("", f"lost the Dask scheduler at {self.where} (the client is {self.client.status})")]
        return events

    @property
    def where(self) -> str:
        return self.address or "the LocalCluster"

    def _event(self, task: Task, fut: Any) -> Event:
        distributed = _distributed()
        if fut.status == "finished":
            result, worker = fut.result()
            done = self.by_worker.setdefault(worker, [0, 0])
            done[0], done[1] = done[0] + 1, done[1] + result.lines
            return TaskDone(task, result)
        if fut.status == "cancelled":
            return WorkerFailed("", f"lost the Dask scheduler at {self.where} (it went away, or was restarted) "
                                    f"while {task.describe()} ran; what is in the output is complete")  # fmt: skip
        err = fut.exception()
        if isinstance(err, distributed.KilledWorker):
            self.restarted += 1
            return TaskLost(task, f"a Dask worker died running it ({err})", fault=True)
        return WorkerFailed("dask", f"{task.describe()}: {type(err).__name__}: {err}")

    def view(self) -> dict[str, Any] | None:
        """The cluster's workers as its scheduler sees them (CPU, memory), with the tasks each ran for us."""
        if self.client is None:
            return self._last_view
        workers: list[dict[str, Any]] = []
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except Exception:  # noqa: BLE001 - a scheduler going away: poll() reports it
            info = {}
        for address, w in sorted(info.get("workers", {}).items()):
            metrics = w.get("metrics", {})
            tasks, lines = self.by_worker.get(address, (0, 0))
            workers.append({"address": address, "name": str(w.get("name", "")), "nthreads": w.get("nthreads"),
                            "tasks": tasks, "lines": lines, "cpu_percent": metrics.get("cpu"),
                            "rss_bytes": metrics.get("memory")})  # fmt: skip
        gone = [a for a in self.by_worker if a not in info.get("workers", {})]
        for address in sorted(gone):  # died or left: what they ran still shows
            tasks, lines = self.by_worker[address]
            workers.append({"address": address, "name": "", "nthreads": None, "tasks": tasks, "lines": lines,
                            "cpu_percent": None, "rss_bytes": None, "gone": True})  # fmt: skip
        return {"name": self.name, "scheduler": self.address or "LocalCluster", "dashboard": self.dashboard_link,
                "workers": workers}

    def shutdown(self, graceful: bool) -> None:
        self._last_view = self.view()  # for the final stats: the workers as they were
        try:
            if self.futures and self.client is not None:
                self.client.cancel([f for _, f in self.futures.values()], force=True)
            self.futures.clear()
        except Exception:  # noqa: BLE001 - shutting down must not raise
            pass
        self.close()
        if self.part_dir:
            shutil.rmtree(self.part_dir, ignore_errors=True)  # parts of tasks lost or not joined

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - a scheduler already gone
                    pass
        self.client = self.cluster = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1


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


def _quiet_dask_logs() -> None:
    """Dask's own log lines (a lost scheduler's reconnect tracebacks, say) are not for our users:
    mpobs says what went wrong in one line. Its config gives some loggers levels of their own."""
    for name in ["distributed", *logging.Logger.manager.loggerDict]:
        if name.startswith("distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


# -- on the workers --------------------------------------------------------------
_PIPELINES: dict[str, Any] = {}
_BUILD_LOCK = threading.Lock()


def _pipeline(spec: Any) -> Any:
    token = spec.token
    with _BUILD_LOCK:
        pipeline = _PIPELINES.get(token)
        if pipeline is None:
            pipeline = _PIPELINES[token] = spec.build()
    return pipeline


def run_remote(spec: Any, layout: Any, settings: Any, task: Task, part: str | None = None) -> tuple[Any, str]:
    """One task on a Dask worker: its result (with its output and its records), and the worker.

    The output is bytes in the result, or written to the file ``part`` (its path in the result).
    """
    from distributed import get_worker

    from mpobs.task import KeptRecords, run_task

    address = get_worker().address
    settings = replace(settings, worker=address)
    records = KeptRecords()
    if part is not None:
        with open(part, "wb") as f:
            result = run_task(task, _pipeline(spec), layout, settings, f.write, None, records)
        output: bytes | str = part
    else:
        out = bytearray()
        result = run_task(task, _pipeline(spec), layout, settings, out.extend, None, records)
        output = bytes(out)
    assert result is not None  # nothing stops a Dask task between batches
    result.traces, result.errors, result.output = records.traces, records.errors, output
    return result, address


def head_hash(path: str) -> tuple[int, str]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return size, hashlib.sha256(f.read(PROBE_HEAD)).hexdigest()


def probe(files: list[str], spec: Any) -> dict[str, Any]:
    """On a worker: what it sees of each file, and whether the pipeline builds there."""
    seen: dict[str, Any] = {}
    for path in files:
        try:
            seen[path] = list(head_hash(path))
        except OSError as err:
            seen[path] = err.strerror or str(err)
    try:
        _pipeline(spec)
        built = None
    except Exception as err:  # noqa: BLE001 - a ConfigError (an import failing there), or worse
        built = f"{type(err).__name__}: {err}"
    return {"files": seen, "pipeline": built}


def probe_files(client: Any, files: list[str], spec: Any) -> None:
    """Every worker sees ``files`` as we do and builds the pipeline; InputError (exit 2) naming the first that does not."""
    want = {path: list(head_hash(path)) for path in files}
    answers = client.run(probe, files, spec)
    for worker, got in sorted(answers.items()):
        for path, seen in got["files"].items():
            if isinstance(seen, str):
                raise InputError(f"Dask worker {worker} cannot read the input {path!r}: {seen} (the input must be "
                                 "at the same path on every worker: a shared file system)")  # fmt: skip
            if seen != want[path]:
                raise InputError(f"Dask worker {worker} sees another file at {path!r} ({seen[0]:,} bytes, not "
                                 f"{want[path][0]:,}, or other first bytes): give every worker the same file")
        if got["pipeline"] is not None:
            raise InputError(f"Dask worker {worker} cannot build the pipeline: {got['pipeline']}")
