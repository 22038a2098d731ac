"""A task: one byte range of the input. Planning tasks, and running one, wherever it runs."""

from __future__ import annotations

import mmap
import os
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from mpobs.batch import Batch
from mpobs.dag import NF, Pipeline
from mpobs.events import CHUNK
from mpobs.segment import Layout
from mpobs.tracing import BatchTrace, sampled

TASK_BYTES = 1 << 20
BATCH_LINES = 5000  # measured: 2,000 cost 2-4 % more per-batch overhead; 10,000 loses cache locality (bench/README.md)
ERROR_LINE_CHARS = 200


@dataclass(frozen=True)
class Task:
    """Bytes ``start .. end`` of the input, starting at a line; ``first_line`` is 1-based."""

    index: int
    start: int
    end: int
    first_line: int
    lines: int

    @property
    def last_line(self) -> int:
        return self.first_line + self.lines - 1

    def describe(self) -> str:
        return f"task {self.index} (lines {self.first_line}-{self.last_line}, bytes {self.start}-{self.end})"


def plan_tasks(path: str, size: int, task_bytes: int = TASK_BYTES) -> Iterator[Task]:
    """Split ``path`` (its first ``size`` bytes) into tasks that end just after a "\\n".

    Lazy: a task's first line number needs the newlines before it counted, so
    counting overlaps with the workers' processing of earlier tasks. Counts on a
    read-only mapping with numpy (no copy: 0.05 s of CPU per 147 MB, against
    0.23 s reading into a buffer), and gives each counted range back to the
    kernel (MADV_DONTNEED), so the coordinator's RSS does not grow with the input.
    """
    if size <= 0:
        return
    page = mmap.PAGESIZE
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
        start, line, index, released = 0, 1, 0, 0
        last_is_newline = mm[size - 1] == 0x0A
        while start < size:
            end = size
            if start + task_bytes < size:
                nl = mm.find(b"\n", start + task_bytes - 1)
                end = size if nl == -1 else nl + 1
            view = np.frombuffer(mm, dtype=np.uint8, count=end - start, offset=start)
            newlines = int(np.count_nonzero(view == 0x0A))
            del view  # the mapping cannot close while a view of it lives
            whole = end // page * page
            if whole > released and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED, released, whole - released)
                released = whole
            lines = newlines + (1 if end == size and not last_is_newline else 0)
            yield Task(index, start, end, line, lines)
            start, line, index = end, line + newlines, index + 1


class CountSink(Protocol):
    """Where a running task's counts go once per batch (the local pool: an in-flight row)."""

    def flush(self, delta: np.ndarray, traces_sent: int, traces_dropped: int, errors_sent: int,
              errors_dropped: int) -> None: ...  # fmt: skip


class EventSink(Protocol):
    """Where trace and error records go, in numbered chunks per task. Returns (sent, dropped) for each kind."""

    def send(self, task: int, chunk: int, traces: list[Any], errors: list[dict[str, Any]]) -> tuple[int, int, int, int]:
        ...


@dataclass
class TaskSettings:
    """What every task of a run shares."""

    input_path: str
    input_name: str
    worker: str = "0"
    batch_lines: int = BATCH_LINES
    trace_rate: float = 0.0  # 0: tracing off
    event_chunk: int = CHUNK  # records per queue message
    max_errors: int | None = None  # workers stop at the next batch once the run counts this many
    clock: Callable[[], int] = time.perf_counter_ns


@dataclass
class TaskResult:
    """What a finished task reports besides its flushed counts (exact, per task)."""

    index: int
    lines: int
    out_lines: int
    key_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    error_types: dict[tuple[str, str], int] = field(default_factory=dict)
    out_bytes: int = 0  # what the task wrote: its share of the output


def run_task(
    task: Task,
    pipeline: Pipeline,
    layout: Layout,
    settings: TaskSettings,
    write: Callable[[bytes], Any],
    counts: CountSink,
    events: EventSink | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TaskResult | None:
    """Read the task's bytes, run them through the DAG in batches, ``write`` the output, a batch a call.

    Returns None when ``should_stop`` said so between two batches (what was
    written is then incomplete and must not be used).
    """
    fd = os.open(settings.input_path, os.O_RDONLY)
    try:
        data = os.pread(fd, task.end - task.start, task.start)
    finally:
        os.close(fd)
    text = data.decode("utf-8", "surrogateescape")
    del data
    lines = text.split("\n")
    del text
    if lines and lines[-1] == "":
        lines.pop()  # the task ended with "\n"; a last line without one stays a line
    n_total = len(lines)
    nbytes = task.end - task.start
    nproc = len(pipeline.nodes)
    lines_col, bytes_col, tasks_col = (layout.run_col(f) for f in ("lines_done", "bytes_done", "tasks_done"))
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
    for lo in range(0, n_total, step):
        if should_stop():
            if events is not None and (pending_traces or pending_errors):
                # What this task saw still tells why the run stopped (--max-errors).
                counts.flush(np.zeros(layout.ncols, dtype=np.int64),
                             *events.send(task.index, sent_chunks, pending_traces, pending_errors))
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
        delta = np.zeros(layout.ncols, dtype=np.int64)
        delta[: nproc * NF] = acc
        for proc in tag_procs:
            for tag, k in proc.key_counts.items():
                delta[layout.tag_col(tag)] += k
            proc.key_counts.clear()
        hi = min(lo + step, n_total)
        delta[lines_col] = hi - lo
        # Bytes are known per task; share them out so the task's batches add up exactly.
        delta[bytes_col] = nbytes * hi // n_total - nbytes * lo // n_total
        if hi >= n_total:
            delta[tasks_col] = 1
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
        counts.flush(delta, *ev)
    return TaskResult(
        task.index,
        n_total,
        out_lines,
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
