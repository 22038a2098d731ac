"""The Dask executor: the run's tasks on a Dask distributed cluster, with the local pool's exact numbers.

``--executor dask`` starts a ``distributed.LocalCluster`` of ``--workers`` processes
(one thread each, no memory limit: a task's memory is bounded by its size, and the
nanny's pausing and restarting would only stall or kill a run); ``--scheduler ADDRESS``
(or ``MPOBS_DASK_SCHEDULER``) uses a running cluster instead.

What goes where: a plain file is read by the Dask workers themselves, by byte range (it
must be at the same path on every worker: a shared file system); blocks of a stream,
standard input or a compressed file are decoded here and shipped with their task. The
pipeline travels as its config (``PipelineSpec``) and is built once per worker. Each
task returns its output, count vector, counters, traces and error records; the
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
import signal
import threading
from dataclasses import replace
from typing import Any, Iterator, Sequence

from mpobs.errors import InputError
from mpobs.executor import Event, Executor, RunContext, TaskDone, TaskLost, TaskWritten, WorkerFailed
from mpobs.inputs import Task
from mpobs.worker import OutputWriteError, pwrite_all

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
        # Writing our output themselves (a LocalCluster): per task, the future holding its output
        # on its worker until it is written; where each task reported done ran; a placement
        # that came before its task was done; the writer thread's queue and its outcomes.
        self.held: dict[int, tuple[Task, Any]] = {}
        self.ran_on: dict[int, str] = {}
        self.placed: dict[int, int] = {}
        self.to_write: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.wrote: queue.SimpleQueue[tuple[Task, tuple[Any, ...]]] = queue.SimpleQueue()
        self.writer: threading.Thread | None = None
        self.out_path: str | None = None
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
        # Workers on this machine write each task's output into our output file themselves (see start).
        self.writes_output = self.cluster is not None
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
        if self.writes_output and ctx.out_fd is not None:
            # The file we have open, through renames and SIGHUP's reopen (the same descriptor number):
            # the output never travels through Dask (measured: 1.5 s of a 6M-line run on 2 cores).
            self.out_path = f"/proc/{os.getpid()}/fd/{ctx.out_fd}"
            self.writer = threading.Thread(target=self._write_in_order, name="mpobs-dask-writer", daemon=True)
            self.writer.start()

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
        if self.out_path is None:
            fut = self.client.submit(run_remote, *args, key=key, pure=False)
        else:  # its output stays on its worker until placed; only the rest comes here
            held = self.client.submit(run_remote, *args, True, key=key + "-held", pure=False)
            self.held[task.index] = (task, held)
            fut = self.client.submit(_without_output, held, key=key, pure=False)
        self.futures[key] = (task, fut)
        fut.add_done_callback(self._finished)

    def place(self, index: int, offset: int) -> bool:
        """Task ``index``'s output goes at ``offset``: written by the worker holding it, once it is done."""
        if index not in self.held:
            return False
        if index in self.ran_on:
            self._write(index, offset)
        else:
            self.placed[index] = offset  # written when it is done
        return True

    def _write(self, index: int, offset: int) -> None:
        task, held = self.held[index]
        self.to_write.put((task, held.key, self.ran_on[index], offset))

    def _write_in_order(self) -> None:
        """The writer thread: each placed output written by the worker holding it, on that worker's
        event loop (``client.run``), not behind the task its one thread is computing."""
        while (job := self.to_write.get()) is not None:
            task, key, worker, offset = job
            try:
                outcome = self.client.run(_write_held, key, self.out_path, offset, workers=[worker])[worker]
            except Exception as err:  # noqa: BLE001 - the worker is gone (its output with it), or the client
                outcome = ("gone", f"{type(err).__name__}: {err}")
            self.wrote.put((task, outcome))
            self._finished(None)

    def _finished(self, fut: Any) -> None:
        """In a client thread: hand the future to ``poll`` (None: the writer thread has news)."""
        if fut is not None:
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
                events += self._done(entry[0], fut)
        while True:
            try:
                task, outcome = self.wrote.get_nowait()
            except queue.Empty:
                break
            events += self._written(task, outcome)
        if not events and self.futures and self.client.status not in ("running", "connecting"):
            return [WorkerFailed("", f"lost the Dask scheduler at {self.where} (the client is {self.client.status})")]
        return events

    @property
    def where(self) -> str:
        return self.address or "the LocalCluster"

    def _done(self, task: Task, fut: Any) -> list[Event]:
        event = self._event(task, fut)
        if not isinstance(event, TaskDone):
            self.held.pop(task.index, None)  # its run is lost (or the run fails): so is what it held
            self.placed.pop(task.index, None)  # its next run is placed again
            return [event]
        if self.out_path is None:
            return [event]
        if task.index in self.placed:  # placed while it ran: write it now
            self._write(task.index, self.placed.pop(task.index))
        return [event]

    def _written(self, task: Task, outcome: tuple[Any, ...]) -> list[Event]:
        """A placed task's write ended: written (TaskWritten), or its output is lost with its worker."""
        self.held.pop(task.index, None)  # its worker may free it now
        self.ran_on.pop(task.index, None)
        if outcome[0] == "ok":
            return [TaskWritten(task.index)]
        if outcome[0] == "io":  # a full disk, say
            return [WorkerFailed("dask", outcome[1], io=True)]
        return [TaskLost(task, f"its output was lost with its Dask worker before it was written ({outcome[1]})",
                         finished=True)]  # fmt: skip

    def _event(self, task: Task, fut: Any) -> Event:
        distributed = _distributed()
        if fut.status == "finished":
            result, worker = fut.result()
            if self.out_path is not None:
                self.ran_on[task.index] = worker  # its output is there
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
            self.to_write.put(None)  # the writer thread ends after the write it is doing
            if self.writer is not None:
                self.writer.join(timeout=30)
            live = [f for _, f in [*self.futures.values(), *self.held.values()]]
            if live and self.client is not None:
                self.client.cancel(live, force=True)
            self.futures.clear()
            self.held.clear()
        except Exception:  # noqa: BLE001 - shutting down must not raise
            pass
        self.close()

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


def run_remote(spec: Any, layout: Any, settings: Any, task: Task, hold: bool = False) -> Any:
    """One task on a Dask worker: its result (with its output as bytes and its records), and the worker.

    ``hold``: the output is kept apart, ``(result, worker, output)``: it stays on the worker
    (``_without_output`` sends the rest) until ``_write`` puts it into the output file.
    """
    from distributed import get_worker

    from mpobs.task import KeptRecords, run_task

    address = get_worker().address
    settings = replace(settings, worker=address)
    out = bytearray()
    records = KeptRecords()
    result = run_task(task, _pipeline(spec), layout, settings, out.extend, None, records)
    assert result is not None  # nothing stops a Dask task between batches
    result.traces, result.errors = records.traces, records.errors
    if hold:
        return result, address, bytes(out)
    result.output = bytes(out)
    return result, address


def _without_output(held: tuple[Any, str, bytes]) -> tuple[Any, str]:
    """Runs where ``held`` is: the result and the worker, without the output (which stays there)."""
    return held[0], held[1]


def _write_held(key: str, path: str, offset: int, dask_worker: Any = None) -> tuple[Any, ...]:
    """On the worker holding task ``key``'s output (``client.run``): write it at ``offset`` of the
    coordinator's output file. ("ok", bytes), ("io", message) or ("gone", why)."""
    held = dask_worker.data.get(key) if dask_worker is not None else None
    if held is None:
        return ("gone", f"{key} is not on {getattr(dask_worker, 'address', '?')} any more")
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            pwrite_all(fd, [held[2]], offset)
        finally:
            os.close(fd)
    except (OSError, OutputWriteError) as err:
        return ("io", str(err))
    return ("ok", len(held[2]))


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
