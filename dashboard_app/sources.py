"""Where the dashboard's numbers come from: a live run's segment and queue, or a saved metrics file."""

from __future__ import annotations

import json
import os
import queue as queue_mod
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from dashboard_app.dagview import build_dag
from dashboard_app.history import History, Sample
from mpobs.defaults import KEEP
from mpobs.tracing.traces import expand as expand_trace


class Source:
    """What the views read. Subclasses fill in the numbers; every method is thread-safe."""

    kind = "none"

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def stats_json(self) -> bytes:
        """``stats()`` as JSON bytes; live sources cache them as long as the stats."""
        return json.dumps(self.stats()).encode()

    def traces(self) -> list[dict[str, Any]]:
        """Newest first."""
        return []

    def errors(self) -> list[dict[str, Any]]:
        """Newest first."""
        return []

    def history(self, limit: int | None = None) -> dict[str, Any]:
        return {"t": [], "lines_per_s": [], "errors_per_s": [], "processors": {}}

    def dag(self) -> dict[str, Any]:
        raise NotImplementedError

    def health(self) -> tuple[bool, str]:
        return True, "ok"

    def stalled(self) -> list[dict[str, Any]]:
        """Calls running longer than --stall-after now (``system.stalled_calls``)."""
        return []


class LiveSource(Source):
    """A running (or just finished) run: reads the segment, drains the dashboard queue.

    ``seg`` is an attached ``StatsSegment``; this source only ever closes it
    (``close``), the coordinator unlinks it. Queue messages:
    ``("events", traces, errors)``, ``("counters", dict)``, ``("slowest", rows)``, ``("executor", view)``,
    ``("alerts", AlertWatch.doc())``, ``("final", stats)``.
    """

    kind = "live"

    def __init__(
        self,
        seg: Any,
        meta: Any,
        keep: int = KEEP,
        clock: Callable[[], float] = time.time,
        grace_s: float = 2.0,
        cache_s: float = 0.1,
    ) -> None:
        self.seg = seg
        self.meta = meta
        self.clock = clock
        self.grace_s = grace_s
        self.cache_s = cache_s
        self._traces: deque[Any] = deque(maxlen=keep)  # compact: mpobs.tracing.traces.CompactTrace
        self._ids = [p["id"] for p in meta.processors]
        self._errors: deque[dict[str, Any]] = deque(maxlen=keep)
        self.received = {"traces": 0, "errors": 0}
        self.counters: dict[str, dict[str, int]] = {}
        self.slowest: list[dict[str, Any]] = []  # the coordinator's SlowestTasks, once a second
        self.final: dict[str, Any] | None = None
        self.executor: dict[str, Any] | None = None  # a cluster's workers, from the coordinator
        self.alerts: dict[str, Any] | None = None  # the --alerts rules' state, from the coordinator
        self.hist = History([p["id"] for p in meta.processors])
        self.usage: dict[int, tuple[float | None, int | None]] = {}  # pid -> (cpu %, rss bytes)
        self._ps: dict[int, Any] = {}
        self._dead_since: dict[int, float] = {}
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._json: tuple[dict[str, Any], bytes] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- feeding -------------------------------------------------------------
    def handle(self, msg: Any) -> None:
        """One message from the coordinator."""
        kind = msg[0]
        with self._lock:
            if kind == "events":
                _, traces, errors = msg
                self._traces.extend(traces)
                self._errors.extend(errors)
                self.received["traces"] += len(traces)
                self.received["errors"] += len(errors)
            elif kind == "counters":
                self.counters = msg[1]
            elif kind == "slowest":
                self.slowest = msg[1]
            elif kind == "alerts":
                self.alerts = msg[1]
            elif kind == "executor":
                self.executor = msg[1]
                self._cache = None
            elif kind == "final":
                self.final = msg[1]
                self.counters = msg[1].get("counters", self.counters)
                self._cache = None

    def drain(self, q: Any, timeout: float) -> None:
        """Handle messages for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                # Waits of at most 0.25 s, so that stop() is seen soon; shorter ones cost CPU (20
                # wake-ups a second took 8 ms of CPU a second from the workers on 2 busy cores).
                msg = q.get(timeout=min(left, 0.25))
            except queue_mod.Empty:
                continue
            except (EOFError, OSError, ValueError):
                self._stop.wait(left)  # the coordinator closed the queue: keep sampling
                return
            self.handle(msg)

    def sample(self) -> None:
        """One history sample, and the workers' CPU and memory (psutil, once a second)."""
        snap = self.seg.snapshot()
        nproc = len(self.meta.processors)
        errors = sum(snap.proc(p, "errors") for p in range(nproc))
        procs = tuple(snap.proc(p, "lines_in") for p in range(nproc))
        self.hist.add(Sample(self.clock(), snap.run("lines_done"), errors, procs))
        self._sample_usage([snap.worker(s)["pid"] for s in range(snap.layout.slots)])

    def _sample_usage(self, pids: list[int]) -> None:
        import psutil

        usage: dict[int, tuple[float | None, int | None]] = {}
        for pid in pids:
            if not pid:
                continue
            proc = self._ps.get(pid)
            try:
                if proc is None:
                    proc = self._ps[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only starts the interval
                usage[pid] = (round(proc.cpu_percent(None), 1), proc.memory_info().rss)
            except psutil.Error:
                usage[pid] = (None, None)
                self._ps.pop(pid, None)
        for pid in list(self._ps):
            if pid not in pids:
                del self._ps[pid]
        with self._lock:
            self.usage = usage

    def run(self, q: Any) -> None:
        """The pump: drain the queue between samples, one sample a second, until ``stop``."""
        while not self._stop.is_set():
            self.sample()
            self.drain(q, 1.0)

    def start(self, q: Any) -> None:
        self._thread = threading.Thread(target=self.run, args=(q,), name="mpobs-dashboard-pump", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- reading -------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        cached = self._cache
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        from mpobs.metrics.document import Parts, build_stats, with_workers_now

        snap = self.seg.snapshot()
        with self._lock:
            final, counters, usage, executor, slowest = (
                self.final,
                self.counters,
                self.usage,
                self.executor,
                self.slowest,
            )
            alerts = self.alerts
            kept = {
                "traces_kept": len(self._traces),
                "errors_kept": len(self._errors),
                "traces_received": self.received["traces"],
                "errors_received": self.received["errors"],
            }
        rates = (self.hist.rates(10), self.hist.rates(60))
        dashboard = dict(kept, source=self.kind, final=final is not None, pid=os.getpid())
        if final is not None:  # it has its own counters, alerts and executor view, as last seen
            doc = with_workers_now(final, snap, Parts(usage=usage, rates=rates, dashboard=dashboard))
        else:
            parts = Parts(
                counters,
                usage=usage,
                slowest=slowest,
                alerts=alerts,
                executor=executor,
                rates=rates,
                dashboard=dashboard,
            )
            doc = build_stats(snap, self.meta, parts, live=True)
        self._cache = (now, doc)
        self._json = None
        return doc

    def stats_json(self) -> bytes:
        # Fifty pollers ask for the same document many times within its 0.1 s life:
        # serialize it once, not once per request (measured: most of a request's CPU).
        doc = self.stats()
        cached = self._json
        if cached is not None and cached[0] is doc:
            return cached[1]
        body = json.dumps(doc).encode()
        self._json = (doc, body)
        return body

    def traces(self) -> list[dict[str, Any]]:
        # Kept compact as they came (cheap to receive); expanded here, at most `keep` of them.
        with self._lock:
            kept = list(reversed(self._traces))
        names, ids = self.meta.record_names(), self._ids
        return [expand_trace(t, names, ids) for t in kept]

    def errors(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._errors))

    def history(self, limit: int | None = None) -> dict[str, Any]:
        return self.hist.series(limit)

    def dag(self) -> dict[str, Any]:
        return build_dag(self.stats(), self.meta.processors, self.meta.edges)

    def health(self) -> tuple[bool, str]:
        snap = self.seg.snapshot()
        state = self.final["system"]["state"] if self.final is not None else snap.state
        if state == "failed":
            return False, "the run failed"
        if state == "interrupted":
            return False, "the run was interrupted"
        if self._thread is not None and not self._thread.is_alive():
            return False, "the dashboard stopped reading the run"
        if state != "running":
            self._dead_since.clear()
            return True, state
        now = time.monotonic()
        for slot in range(snap.layout.slots):
            w = snap.worker(slot)
            if w["pid"] and not w["alive"]:
                since = self._dead_since.setdefault(slot, now)
                if now - since >= self.grace_s:
                    return False, f"worker {slot} (pid {w['pid']}) died and was not replaced"
            else:
                self._dead_since.pop(slot, None)
        return True, state

    def stalled(self) -> list[dict[str, Any]]:
        return list(self.stats()["system"].get("stalled_calls", []))

    def close(self) -> None:
        self.stop()
        self.seg.close()


class SavedSource(Source):
    """A finished run's ``--save-metrics`` file: the stats shape plus recent_errors and recent_traces."""

    kind = "saved"

    def __init__(self, doc: dict[str, Any], path: str = "") -> None:
        from mpobs.metrics.document import Parts, place

        self.doc = doc
        self.path = path
        self._traces = list(doc.get("recent_traces") or [])
        self._errors = list(doc.get("recent_errors") or [])
        stats = {k: v for k, v in doc.items() if k not in ("recent_traces", "recent_errors")}
        for row in stats.get("processors", {}).values():
            row.setdefault("rate_10s", 0.0)
            row.setdefault("rate_1m", 0.0)
        stats.setdefault("workers", [])
        dashboard = {
            "source": self.kind,
            "final": True,
            "path": path,
            "traces_kept": len(self._traces),
            "errors_kept": len(self._errors),
        }
        place(stats, Parts(dashboard=dashboard))
        self._stats = stats

    @classmethod
    def load(cls, path: str) -> SavedSource:
        """Read a metrics file; raises ValueError with a message naming what is wrong."""
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except OSError as err:
            raise ValueError(f"metrics file {path!r}: cannot read it: {err.strerror}") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"metrics file {path!r}: invalid JSON at line {err.lineno}: {err.msg}") from err
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("processors"), dict)
            or not isinstance(doc.get("system"), dict)
        ):
            raise ValueError(f"metrics file {path!r}: not an mpobs metrics file (no 'processors' and 'system')")
        try:
            # Build every view once now: a file with wrong values is refused here with a
            # message, rather than answering 500 on some later request.
            from prometheus_client import generate_latest

            from dashboard_app.metrics import make_registry

            source = cls(doc, path)
            source.dag()
            generate_latest(make_registry(source))
        except Exception as err:
            raise ValueError(
                f"metrics file {path!r}: not a valid mpobs metrics file ({type(err).__name__}: {err})"
            ) from err
        return source

    def stats(self) -> dict[str, Any]:
        return self._stats

    def traces(self) -> list[dict[str, Any]]:
        return self._traces

    def errors(self) -> list[dict[str, Any]]:
        return self._errors

    def dag(self) -> dict[str, Any]:
        meta = self.doc.get("meta") or {}
        edges = self.doc.get("edges") or meta.get("edges") or []
        return build_dag(self._stats, meta.get("processors"), edges)

    def health(self) -> tuple[bool, str]:
        return True, "saved run"
