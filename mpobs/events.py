"""Trace and error records: sent by workers in batches on a bounded queue, kept in ring buffers."""

from __future__ import annotations

import json
import queue as queue_mod
import threading
from collections import Counter, deque
from typing import IO, Any, Callable

#: How many records of each kind a consumer keeps (traces, errors).
KEEP = 1000
#: Bounded queue size, in messages (one message carries one batch's records).
QUEUE_MESSAGES = 256


class QueueEvents:
    """A worker's side: one message per batch, never one per record.

    A full queue drops the message (and counts it) instead of blocking the
    worker, except for traces when every trace must be saved (``wait``).
    """

    def __init__(self, q: Any, wait: bool = False) -> None:
        self.q = q
        self.wait = wait

    def send(self, traces: list[dict[str, Any]], errors: list[dict[str, Any]]) -> tuple[int, int, int, int]:
        nt, ne = len(traces), len(errors)
        if self.wait and traces:
            self.q.put((traces, errors))
            return nt, 0, ne, 0
        try:
            self.q.put_nowait((traces, errors))
        except queue_mod.Full:
            return 0, nt, 0, ne
        return nt, 0, ne, 0


class EventCollector:
    """The consumer's side: the last KEEP traces and errors, a JSON Lines file, a forward queue."""

    def __init__(self, keep: int = KEEP, traces_file: IO[str] | None = None, forward: Any = None,
                 expand: Callable[[Any], dict[str, Any]] = lambda t: t) -> None:  # fmt: skip
        # Traces arrive compact (mpobs.tracing); they are expanded only when read or saved.
        self.expand = expand
        self.traces: deque[Any] = deque(maxlen=keep)
        self.errors: deque[dict[str, Any]] = deque(maxlen=keep)
        self.messages = 0
        self.traces_delivered = 0
        self.errors_delivered = 0
        self.forward_dropped = 0
        self.traces_file = traces_file
        self.forward = forward
        self.last_error: dict[str, Any] | None = None
        self.error_types: Counter[tuple[str, str]] = Counter()

    def drain(self, q: Any, limit: int = 10_000) -> int:
        """Take what is waiting on ``q`` without blocking; returns how many messages."""
        n = 0
        while n < limit:
            try:
                traces, errors = q.get_nowait()
            except queue_mod.Empty:
                break
            except (EOFError, OSError):
                break  # the queue was closed under us: the run is ending
            self.add(traces, errors)
            n += 1
        return n

    def add(self, traces: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
        self.messages += 1
        self.traces.extend(traces)
        self.errors.extend(errors)
        self.traces_delivered += len(traces)
        self.errors_delivered += len(errors)
        if errors:
            self.last_error = errors[-1]
        if self.traces_file is not None:
            expand = self.expand
            self.traces_file.writelines(json.dumps(expand(t)) + "\n" for t in traces)
        if self.forward is not None:
            try:
                self.forward.put_nowait(("events", traces, errors))
            except queue_mod.Full:
                self.forward_dropped += len(traces) + len(errors)
            except (ValueError, OSError):
                self.forward = None  # the dashboard is gone; the run goes on

    def recent_traces(self, n: int = 100) -> list[dict[str, Any]]:
        return [self.expand(t) for t in list(self.traces)[-n:][::-1]]

    def recent_errors(self, n: int = 100) -> list[dict[str, Any]]:
        return list(self.errors)[-n:][::-1]


class QueueReader:
    """Feeds a collector from the workers' queue on a thread of its own.

    Reading a message blocks until all of it has arrived; a worker killed while
    writing one would leave the reader waiting. On its own thread that delays
    only the records, never the run; once the workers are gone the coordinator
    closes the queue's last write end and the half message ends as EOF.
    """

    def __init__(self, q: Any, collector: EventCollector) -> None:
        self.q = q
        self.collector = collector
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="mpobs-events", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                traces, errors = self.q.get(timeout=0.05)
            except queue_mod.Empty:
                if self.closing:
                    return
                continue
            except (EOFError, OSError, ValueError):
                return  # the queue ended (a cut-off message after a killed worker, or closed)
            self.collector.add(traces, errors)

    def finish(self, timeout: float = 30.0) -> None:
        """Read what is left, then stop (call after the writers are gone)."""
        self.closing = True
        if self.thread.is_alive():
            self.thread.join(timeout)
