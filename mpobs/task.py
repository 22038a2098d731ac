"""Running one task through the DAG, wherever it runs: its output, its count vector, its records."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from mpobs.batch import Batch
from mpobs.dag import NF, Pipeline
from mpobs.defaults import BATCH_LINES, ERROR_LINE_CHARS, EVENT_CHUNK
from mpobs.inputs import Task
from mpobs.segment import Layout
from mpobs.tracing import BatchTrace, sampled


class CountSink(Protocol):
    """Where a running task's counts go once per batch, for live stats (the local pool: an in-flight row)."""

    def flush(self, delta: np.ndarray, traces_sent: int, traces_dropped: int, errors_sent: int,
              errors_dropped: int) -> None: ...  # fmt: skip


class EventSink(Protocol):
    """Where trace and error records go, in numbered chunks per task. Returns (sent, dropped) for each kind."""

    def send(self, task: int, chunk: int, traces: list[Any], errors: list[dict[str, Any]]) -> tuple[int, int, int, int]:
        ...


@dataclass
class TaskSettings:
    """What every task of a run shares."""

    input_name: str
    worker: str = "0"
    batch_lines: int = BATCH_LINES
    trace_rate: float = 0.0  # 0: tracing off
    event_chunk: int = EVENT_CHUNK  # records per queue message
    max_errors: int | None = None  # workers stop at the next batch once the run counts this many
    clock: Callable[[], int] = time.perf_counter_ns


@dataclass
class TaskResult:
    """What a finished task reports: exact, per task; the coordinator commits it when it is in the output.

    ``counts`` is the task's count vector (``segment.Layout.vector``); ``pending`` says
    that the executor has already moved them from its in-flight row of the segment to
    the pending row (``StatsSegment.complete``); otherwise the coordinator does. ``output`` is the task's output: bytes, a part file's
    path, or None when the executor writes it itself where it is placed
    (``Executor.place``). ``traces`` and ``errors`` are its records, when they travel
    with the result rather than on a queue of their own.
    """

    index: int
    lines: int
    out_lines: int
    counts: np.ndarray
    key_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    error_types: dict[tuple[str, str], int] = field(default_factory=dict)
    out_bytes: int = 0  # what the task wrote: its share of the output
    pending: bool = False
    output: bytes | str | None = None
    traces: list[Any] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def run_task(
    task: Task,
    pipeline: Pipeline,
    layout: Layout,
    settings: TaskSettings,
    write: Callable[[bytes], Any],
    counts: CountSink | None,
    events: EventSink | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TaskResult | None:
    """Read the task's bytes, run them through the DAG in batches, ``write`` the output, a batch a call.

    ``counts`` (may be None) sees each batch's count vector as it is made. Returns
    None when ``should_stop`` said so between two batches (what was written is then
    incomplete and must not be used).
    """
    data = task.read()
    text = data.decode("utf-8", "surrogateescape")
    del data
    lines = text.split("\n")
    del text
    if lines and lines[-1] == "":
        lines.pop()  # the task ended with "\n"; a last line without one stays a line
    n_total = len(lines)
    nbytes = task.end - task.start
    nproc = len(pipeline.nodes)
    key_counts: dict[str, Counter[str]] = {n.id: Counter() for n in pipeline.nodes if n.proc.counts_keys}
    error_types: Counter[tuple[str, str]] = Counter()
    tag_procs = [n.proc for n in pipeline.nodes if n.proc.tags_added]
    out_lines = 0
    pending_traces: list[Any] = []  # compact traces (mpobs.tracing.expand)
    pending_errors: list[dict[str, Any]] = []
    sent_chunks = 0
    step = settings.batch_lines
    # The task's sampled lines at once: one numpy pass per task instead of one per batch.
    traced_all = sampled(task.first_line, n_total, settings.trace_rate) if settings.trace_rate > 0 else []
    out_bytes = 0
    total = np.zeros(layout.ncols, dtype=np.int64)
    for lo in range(0, n_total, step):
        if should_stop():
            if events is not None and (pending_traces or pending_errors):
                # What this task saw still tells why the run stopped (--max-errors).
                sent = events.send(task.index, sent_chunks, pending_traces, pending_errors)
                if counts is not None:
                    counts.flush(np.zeros(layout.ncols, dtype=np.int64), *sent)
            return None
        chunk = lines[lo : lo + step]
        first = task.first_line + lo
        batch = Batch(list(range(first, first + len(chunk))), chunk)
        acc = [0] * (nproc * NF)
        errs: list[tuple[int, int, str, BaseException]] = []
        tracer = None
        if traced_all:
            traced = traced_all[bisect_left(traced_all, first) : bisect_left(traced_all, first + len(chunk))]
            tracer = BatchTrace(traced, batch) if traced else None
        out = pipeline.run_batch(batch, acc, errs, tracer, settings.clock)
        if out.texts:
            chunk_bytes = _encode(out.texts)
            write(chunk_bytes)
            out_bytes += len(chunk_bytes)
            out_lines += len(out.texts)
        tag_counts: Counter[str] = Counter()
        for proc in tag_procs:
            tag_counts.update(proc.key_counts)
            proc.key_counts.clear()
        hi = min(lo + step, n_total)
        # Bytes are known per task; share them out so the task's batches add up exactly.
        nb = nbytes * hi // n_total - nbytes * lo // n_total
        delta = layout.vector(acc, tag_counts, hi - lo, nb, 1 if hi >= n_total else 0)
        total += delta
        for node in pipeline.nodes:
            if node.proc.counts_keys:
                key_counts[node.id].update(node.proc.key_counts)
                node.proc.key_counts.clear()
        ev = (0, 0, 0, 0)
        for e in errs:
            error_types[(pipeline.nodes[e[0]].id, type(e[3]).__name__)] += 1
        if events is not None:
            if errs:
                pending_errors += [_error_record(pipeline, settings, *e) for e in errs]
            if tracer is not None:
                pending_traces += tracer.finish(out)
            # One message per CHUNK records, and one for the rest at the task's end: a
            # message costs a wake-up of the queue thread and a pickling, whatever its size.
            full = len(pending_traces) + len(pending_errors) >= settings.event_chunk
            if full or (hi >= n_total and (pending_traces or pending_errors)):
                ev = events.send(task.index, sent_chunks, pending_traces, pending_errors)
                pending_traces, pending_errors = [], []
                sent_chunks += 1
        if counts is not None:
            counts.flush(delta, *ev)
    return TaskResult(
        task.index,
        n_total,
        out_lines,
        total,
        {k: dict(v) for k, v in key_counts.items()},
        dict(error_types),
        out_bytes,
    )


def _encode(texts: list[str]) -> bytes:
    joined = "\n".join(texts) + "\n"
    try:
        return joined.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Only text a python step made can hold a surrogate that decoding did not
        # make; escape just those lines so invalid input bytes still pass through.
        return b"".join(_encode_line(t) for t in texts)


def _encode_line(text: str) -> bytes:
    try:
        return (text + "\n").encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return (text + "\n").encode("utf-8", "backslashreplace")


def _error_record(pipeline: Pipeline, settings: TaskSettings, p: int, num: int, text: str,
                  exc: BaseException) -> dict[str, Any]:  # fmt: skip
    return {
        "processor": pipeline.nodes[p].id,
        "line_id": f"{settings.input_name}:{num}",
        "line_number": num,
        "line": text[:ERROR_LINE_CHARS],
        "error_type": type(exc).__name__,
        "message": str(exc),
        "timestamp": time.time(),
        "worker": settings.worker,
    }
