"""Trace and error records: sent by workers in batches on a bounded queue, kept in ring buffers."""

from __future__ import annotations

import queue as queue_mod
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from mpobs.defaults import KEEP


class SavedTraces:
    """A task's --save-traces records of one message: ``data``, lines of the trace file
    (mpobs.tracing.tracefile), which hold ``lines`` traced lines (the traces it delivers)."""

    __slots__ = ("data", "lines")

    def __init__(self, lines: int, data: bytes) -> None:
        self.lines, self.data = lines, data

    def __reduce__(self) -> tuple[Any, ...]:  # it goes on a worker's queue: its class and two fields
        return SavedTraces, (self.lines, self.data)


def traces_counted(traces: list[Any], saved: SavedTraces | None) -> int:
    """The traces a message counts: its --save-traces records' lines when it has them, else its traces."""
    return len(traces) if saved is None else saved.lines


class QueueEvents:
    """A worker's side: records go in messages ``(task index, chunk, traces, errors, saved)``.

    Each worker has a queue of its own, so a worker killed in the middle of a
    write harms only its own queue. Normally a bounded multiprocessing.Queue: a
    full queue drops the message (and counts it) instead of blocking the worker.
    When every trace must be saved (``wait``), a multiprocessing.SimpleQueue:
    ``put`` writes to the pipe itself (the worker waits for room), so a task's
    records are in the pipe before its ``Done`` message, and a worker killed later loses
    none of them. Chunks are numbered per task, so a task that runs again after
    a crash sends the same (task, chunk) keys and the reader drops repeats.
    """

    def __init__(self, q: Any, wait: bool = False) -> None:
        self.q = q
        self.wait = wait

    def send(
        self,
        task: int,
        chunk: int,
        traces: list[Any],
        errors: list[dict[str, Any]],
        saved: SavedTraces | None = None,
    ) -> tuple[int, int, int, int]:
        nt, ne = traces_counted(traces, saved), len(errors)
        msg = (task, chunk, traces, errors, saved)
        if self.wait:  # a SimpleQueue: written to the pipe before put returns, so before ``Done``
            self.q.put(msg)
            return nt, 0, ne, 0
        try:
            self.q.put_nowait(msg)
        except queue_mod.Full:
            return 0, nt, 0, ne
        return nt, 0, ne, 0


class EventCollector:
    """The consumer's side: the last KEEP traces and errors, the --save-traces file, a forward queue.

    Traces arrive compact (mpobs.tracing.traces) and are expanded only when read. The file
    gets the records tasks made for it (mpobs.tracing.tracefile) as they are; with --save-traces
    the lines those hold are the traces delivered. ``add`` may run on several reader
    threads (one per worker queue): it holds a lock.
    """

    def __init__(
        self, keep: int = KEEP, forward: Any = None, expand: Callable[[Any], dict[str, Any]] = lambda t: t
    ) -> None:
        self.expand = expand
        self.traces: deque[Any] = deque(maxlen=keep)
        self.errors: deque[dict[str, Any]] = deque(maxlen=keep)
        self.messages = 0
        self.traces_delivered = 0
        self.errors_delivered = 0
        self.repeats = 0  # records of a (task, chunk) already delivered by a worker that then died
        self.forward_dropped = 0
        self.traces_file: IO[bytes] | None = None
        self.forward = forward
        self.last_error: dict[str, Any] | None = None
        self.write_error: BaseException | str | None = None
        self._opened: IO[bytes] | None = None  # the --save-traces file, open until close_traces()
        self.traces_path = ""
        self._seen: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def open_traces(self, path: str, header: bytes) -> None:
        """The --save-traces file: ``header`` (mpobs.tracing.tracefile.header).

        Then every saved record, until ``close_traces``.
        """
        self.traces_path = path
        self.traces_file = self._opened = open(path, "wb")  # noqa: SIM115
        self.traces_file.write(header)

    def close_traces(self) -> str | None:
        """Close the --save-traces file; what went wrong with its last flush (a full disk, say), if anything."""
        with self._lock:
            opened, self._opened, self.traces_file = self._opened, None, None
        try:
            if opened is not None:
                opened.close()
        except OSError as err:
            return f"I/O error: cannot write the --save-traces file {self.traces_path!r}: {err.strerror or err}"
        return None

    def add(
        self,
        task: int,
        chunk: int,
        traces: list[Any],
        errors: list[dict[str, Any]],
        saved: SavedTraces | None = None,
    ) -> None:
        with self._lock:
            self.messages += 1
            if (task, chunk) in self._seen:
                self.repeats += traces_counted(traces, saved) + len(errors)
                return
            self._seen.add((task, chunk))
            self.traces.extend(traces)
            self.errors.extend(errors)
            self.traces_delivered += traces_counted(traces, saved)
            self.errors_delivered += len(errors)
            if errors:
                self.last_error = errors[-1]
            if self.traces_file is not None and saved is not None:
                try:
                    self.traces_file.write(saved.data)
                except (OSError, ValueError) as err:  # e.g. the disk is full: the run fails, reading goes on
                    self.write_error = err.strerror or err if isinstance(err, OSError) else err
                    self.traces_file = None
            if self.forward is not None:
                try:
                    self.forward.put_nowait(("events", traces, errors))
                except queue_mod.Full:
                    self.forward_dropped += len(traces) + len(errors)
                except (ValueError, OSError):
                    self.forward = None  # the dashboard is gone; the run goes on

    def max_errors_stop(self, limit: int, total: int, reached: bool) -> str | None:
        """Why the run stops once ``total`` live errors reached ``limit`` (or a worker ``reached`` it), or None.

        Workers stop within a batch of the limit; errors of tasks that did not finish are
        counted here but not in the saved metrics, which match the written output. The last
        error's record may still be on the way: it is waited for, a second at most.
        """
        if total < limit and not reached:
            return None
        deadline = time.monotonic() + 1.0
        while self.last_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        last = self.last_error
        what = ""
        if last:  # an exception with no message is named by its type alone
            what = f"last: {last['processor']} on {last['line_id']}: {last['error_type']}"
            what += f": {last['message']}" if last["message"] else ""
        counted = f"{total:,} errors counted" if total >= limit else ""
        about = ", ".join(x for x in (counted, what) if x)
        return f"stopped: --max-errors {limit} reached" + (f" ({about})" if about else "")

    def recent_traces(self, n: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            kept = list(self.traces)[-n:][::-1]
        return [self.expand(t) for t in kept]

    def recent_errors(self, n: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.errors)[-n:][::-1]


class QueueReader:
    """Feeds a collector from one worker's queue on a thread of its own.

    Reading a message blocks until all of it has arrived; a worker killed while
    writing one would leave the reader waiting. On its own thread that stalls
    only that dead worker's queue, never the run; once the workers are gone the
    coordinator closes its own write ends, and a half message ends as EOF.
    """

    def __init__(self, q: Any, collector: EventCollector, name: str = "mpobs-events") -> None:
        self.q = q
        self.collector = collector
        self.closing = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> QueueReader:
        self.thread.start()
        return self

    def _run(self) -> None:
        reader = self.q._reader  # Queue and SimpleQueue alike: wait for data, then read a whole message
        while True:
            try:
                if not reader.poll(0.05):
                    if self.closing:
                        return
                    continue
                msg = self.q.get()
            except (EOFError, OSError, ValueError):
                return  # the queue ended (a cut-off message after a killed worker, or closed)
            try:
                self.collector.add(*msg)
            except Exception as err:  # keep draining: a worker waiting to put must not hang
                self.collector.write_error = self.collector.write_error or err

    def finish(self, timeout: float = 30.0) -> None:
        """Read what is left, then stop (call after the writers are gone)."""
        self.closing = True
        try:
            self.q._writer.close()  # our copy of the write end: now a cut-off message reads as EOF
        except OSError:
            pass
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.q.close()
        try:
            self.q._reader.close()  # Queue.close() leaves it open until garbage collection
        except OSError:
            pass
