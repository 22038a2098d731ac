"""Running one task through the DAG, wherever it runs: its output, its count vector, its records."""

from __future__ import annotations

import copy
import operator
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mpobs.defaults import BATCH_LINES, ERROR_LINE_CHARS, EVENT_CHUNK, KEEP
from mpobs.metrics.layout import CALL_WIDTH, PROC_WIDTH, Layout
from mpobs.pipeline.batch import Batch
from mpobs.pipeline.dag import Pipeline
from mpobs.pipeline.processors.base import Processor
from mpobs.pipeline.processors.python import PythonFunction
from mpobs.tracing.records import SavedTraces, traces_counted
from mpobs.tracing.traces import BatchTrace, sampled

_ZEROS = (0,) * CALL_WIDTH

if TYPE_CHECKING:
    from mpobs.inputs.base import Task  # the layer above makes tasks; running one needs only its read()
    from mpobs.inputs.blockstore import BlockStore


class CountSink(Protocol):
    """Where a running task's counts go once per batch, for live stats (the local pool: an in-flight row)."""

    def flush(
        self, delta: list[int], traces_sent: int, traces_dropped: int, errors_sent: int, errors_dropped: int
    ) -> None: ...


class EventSink(Protocol):
    """Where trace and error records go, in numbered chunks per task. Returns (sent, dropped) for each kind.

    ``saved``: the chunk's --save-traces records, whose lines are what counts as traces sent then.
    """

    def send(
        self, task: int, chunk: int, traces: list[Any], errors: list[dict[str, Any]], saved: SavedTraces | None = None
    ) -> tuple[int, int, int, int]: ...


class TaskSettings:
    """What every task of a run shares.

    Plain classes, not dataclasses, on the start-up path: defining a dataclass runs
    generated code (about 0.7 ms each, 5 ms of every start for the seven there were).
    """

    def __init__(
        self,
        inputs: Sequence[tuple[str, str]],
        worker: str = "0",
        batch_lines: int = BATCH_LINES,
        trace_rate: float = 0.0,
        event_chunk: int = EVENT_CHUNK,
        max_errors: int | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
        save_traces: bool = False,
    ) -> None:
        self.inputs = inputs  # per input: (the name records show, the name as given)
        self.worker = worker
        self.batch_lines = batch_lines
        self.trace_rate = trace_rate  # 0: tracing off
        self.event_chunk = event_chunk  # records per queue message
        self.max_errors = max_errors  # workers stop at the next batch once the run counts this many
        self.clock = clock
        #: Record every sampled line for the --save-traces file (mpobs.tracing.tracefile), as the task's ``saved``.
        self.save_traces = save_traces

    def for_worker(self, worker: str) -> TaskSettings:
        """The same settings, for tasks run by ``worker``."""
        other = copy.copy(self)
        other.worker = worker
        return other


class TaskResult:
    """What a finished task reports: exact, per task; the coordinator commits it when it is in the output.

    ``counts`` is the task's count vector (``segment.Layout.vector``); ``pending`` says
    that the executor has already moved them from its in-flight row of the segment to
    the pending row (``StatsSegment.complete``); otherwise the coordinator does. ``output`` is the task's
    output: bytes, a part file's path, or None when the executor writes it itself where it is placed
    (``Executor.place``). ``traces`` and ``errors`` are its records, when they travel
    with the result rather than on a queue of their own.
    """

    def __init__(
        self,
        index: int,
        lines: int,
        out_lines: int,
        counts: list[int],
        key_counts: dict[str, dict[str, int]] | None = None,
        error_types: dict[tuple[str, str], int] | None = None,
        out_bytes: int = 0,
        worker: str = "",
    ) -> None:
        self.index, self.lines, self.out_lines, self.counts = index, lines, out_lines, counts
        self.key_counts = key_counts if key_counts is not None else {}
        self.error_types = error_types if error_types is not None else {}
        self.out_bytes = out_bytes  # what the task wrote: its share of the output
        self.worker = worker  # who ran it (TaskSettings.worker)
        self.pending = False
        self.output: bytes | str | None = None
        self.traces: list[Any] = []
        self.errors: list[dict[str, Any]] = []
        self.saved: SavedTraces | None = None


class KeptRecords:
    """An EventSink that keeps a task's records for its result (executors whose records travel with it)."""

    def __init__(self) -> None:
        self.traces: list[Any] = []
        self.errors: list[dict[str, Any]] = []
        self.saved: list[bytes] = []
        self.saved_lines = 0

    def send(
        self, task: int, chunk: int, traces: list[Any], errors: list[dict[str, Any]], saved: SavedTraces | None = None
    ) -> tuple[int, int, int, int]:
        self.traces += traces
        self.errors += errors
        if saved is not None:
            self.saved_lines += saved.lines
            self.saved.append(saved.data)
        return traces_counted(traces, saved), 0, len(errors), 0

    def attach(self, result: TaskResult) -> TaskResult:
        """The task's result, carrying these records."""
        result.traces, result.errors = self.traces, self.errors
        result.saved = SavedTraces(self.saved_lines, b"".join(self.saved)) if self.saved else None
        return result


def run_task(
    task: Task,
    pipeline: Pipeline,
    layout: Layout,
    settings: TaskSettings,
    write: Callable[[bytes], Any],
    counts: CountSink | None,
    events: EventSink | None,
    should_stop: Callable[[], bool] = lambda: False,
    store: BlockStore | None = None,
) -> TaskResult | None:
    """Read the task's bytes, run them through the DAG in batches, ``write`` the output, a batch a call.

    ``counts`` (may be None) sees each batch's count vector as it is made. Returns
    None when ``should_stop`` said so between two batches (what was written is then
    incomplete and must not be used).
    """
    started = settings.clock()
    data = task.read(store)
    lines = str(data, "utf-8", "surrogateescape").split("\n")
    if task.slot >= 0 and store is not None:
        del data
        store.forget(task.slot)  # this process's pages of the block: the coordinator keeps it
    if lines and lines[-1] == "":
        lines.pop()  # the task ended with "\n"; a last line without one stays a line
    run = _TaskRun(task, pipeline, layout, settings, events, len(lines), started)
    step = settings.batch_lines
    for lo in range(0, len(lines), step):
        if should_stop():
            sent = run.send_records(final=True)  # what this task saw still tells why the run stopped
            if counts is not None and sent is not None:
                counts.flush([0] * layout.ncols, *sent)
            return None
        out = run.batch(lines[lo : lo + step], lo)
        if out:
            write(out)
        if counts is not None:
            counts.flush(run.delta, *run.sent)
    return run.result()


class _TaskRun:
    """One task's state between its batches: totals, counter keys, records not yet sent."""

    def __init__(
        self,
        task: Task,
        pipeline: Pipeline,
        layout: Layout,
        settings: TaskSettings,
        events: EventSink | None,
        n_lines: int,
        started: int = 0,
    ) -> None:
        self.task, self.pipeline, self.layout, self.settings, self.events = task, pipeline, layout, settings, events
        self.n_lines, self.started = n_lines, started
        _, given = settings.inputs[task.input]
        pipeline.at(given, task.first_line - task.file_line, task.input)
        self.total = [0] * layout.ncols
        self.key_counts: dict[str, Counter[str]] = {n.id: Counter() for n in pipeline.nodes if n.proc.counts_keys}
        self.error_types: Counter[tuple[str, str]] = Counter()
        self.tag_procs = [n.proc for n in pipeline.nodes if n.proc.tags_added]
        self.timed_procs = [_timed(pipeline.nodes[p].proc) for p in layout.timed]
        for proc in self.timed_procs:
            proc.timed_out_lines, proc.timed_out_batches = {}, {}
        for call in task.timed_out:
            proc = _timed(pipeline.nodes[call.processor].proc)
            (proc.timed_out_lines if call.lines <= 1 else proc.timed_out_batches)[call.first_line] = call.seconds
        self.out_lines = self.out_bytes = 0
        self.traces: list[Any] = []  # compact traces (mpobs.tracing.traces.expand), not yet sent
        self.errors: list[dict[str, Any]] = []
        self.saved: list[bytes] = []  # --save-traces records (mpobs.tracing.tracefile), not yet sent
        self.saved_lines = 0
        self.chunks_sent = 0
        self.delta = self.total  # the last batch's count vector
        self.sent = (0, 0, 0, 0)  # what the last batch sent: traces sent, dropped, errors sent, dropped
        # The task's sampled lines at once, not once per batch.
        rate = settings.trace_rate
        self.traced = sampled(task.first_line, n_lines, rate) if rate > 0 else []
        self.recorded = self.traced if settings.save_traces else []  # every one, for the file
        if self.recorded:
            from mpobs.tracing.tracefile import BatchRecorder  # only with --save-traces: every run imports this module

            self.recorder = BatchRecorder
        # Only the most recent KEEP traces can be shown (/trace), so a task builds no more than that.
        self.skipped = max(0, len(self.traced) - KEEP)
        if self.skipped:  # no trace built for /trace: only the most recent can be shown
            self.traced = self.traced[self.skipped :]
            if settings.save_traces:
                self.skipped = 0  # but the file has them all

    def batch(self, chunk: list[str], lo: int) -> bytes:
        """Run lines ``lo ..`` of the task; returns their output, sets ``delta`` and ``sent``."""
        first = self.task.first_line + lo
        batch = Batch(list(range(first, first + len(chunk))), chunk)
        acc = [0] * (len(self.pipeline.nodes) * PROC_WIDTH)
        errs: list[tuple[int, int, str, BaseException]] = []
        shown, saved = _among(self.traced, batch), _among(self.recorded, batch)
        clock: Any = _StepTime() if shown and saved else time.time  # one reading a step, for both
        tracer = BatchTrace(shown, batch, clock) if shown else None
        recorder = self.recorder(saved, batch, clock) if saved else None
        observer = _Both(tracer, recorder, clock) if tracer and recorder else tracer or recorder
        out = self.pipeline.run_batch(batch, acc, errs, observer, self.settings.clock)
        data = _encode(out.texts) if out.texts else b""
        self.out_bytes += len(data)
        self.out_lines += len(out.texts)
        self._count(acc, lo, lo + len(chunk))
        for p, _, _, exc in errs:  # (processor, line number, text, exception): Pipeline.run_batch's
            self.error_types[(self.pipeline.nodes[p].id, type(exc).__name__)] += 1
        self.sent = (0, 0, 0, 0)
        if self.events is not None:
            self.errors += [_error_record(self.pipeline, self.settings, self.task, *e) for e in errs]
            offset = self.task.first_line - self.task.file_line
            if tracer is not None:
                self.traces += tracer.finish(out, self.task.input, offset)
            if recorder is not None:
                self.saved.append(recorder.line(self.task.input, offset))
                self.saved_lines += len(recorder)
            self.sent = self.send_records(final=lo + len(chunk) >= self.n_lines) or self.sent
        return data

    def _count(self, acc: list[int], lo: int, hi: int) -> None:
        tag_counts: Counter[str] = Counter()
        for proc in self.tag_procs:
            tag_counts.update(proc.key_counts)
            proc.key_counts.clear()
        for node in self.pipeline.nodes:
            if node.proc.counts_keys:
                self.key_counts[node.id].update(node.proc.key_counts)
                node.proc.key_counts.clear()
        # Bytes are known per task; share them out so the task's batches add up exactly.
        nbytes, n = self.task.input_bytes, self.n_lines
        nb = nbytes * hi // n - nbytes * lo // n
        calls: list[int] = []
        for proc in self.timed_procs:
            calls += proc.calls
            proc.calls[:] = _ZEROS
        last = hi >= n
        task_ns = self.settings.clock() - self.started if last else None  # read, decode and every batch
        self.delta = self.layout.vector(acc, tag_counts, hi - lo, nb, 1 if last else 0, calls, task_ns)
        if last and self.skipped:
            self.delta[self.layout.run_col("traces_skipped")] = self.skipped
        self.total = list(map(operator.add, self.total, self.delta))

    def send_records(self, final: bool) -> tuple[int, int, int, int] | None:
        """Send pending records: once CHUNK have gathered, or what is left at the task's end.

        A message costs a wake-up of the queue thread and a pickling, whatever its size.
        """
        pending = len(self.traces) + len(self.errors) + self.saved_lines
        if self.events is None or not pending or (pending < self.settings.event_chunk and not final):
            return None
        saved = SavedTraces(self.saved_lines, b"".join(self.saved)) if self.settings.save_traces else None
        sent = self.events.send(self.task.index, self.chunks_sent, self.traces, self.errors, saved)
        self.traces, self.errors, self.saved, self.saved_lines = [], [], [], 0
        self.chunks_sent += 1
        return sent

    def result(self) -> TaskResult:
        keys = {k: dict(v) for k, v in self.key_counts.items()}
        return TaskResult(
            self.task.index,
            self.n_lines,
            self.out_lines,
            self.total,
            keys,
            dict(self.error_types),
            self.out_bytes,
            self.settings.worker,
        )


def _timed(proc: Processor) -> PythonFunction:
    """A processor that times its calls (``Layout.timed``): a python one, whose call histogram
    and timed-out calls each task sets."""
    if not isinstance(proc, PythonFunction):
        msg = f"processor {proc.id!r} ({proc.type_name}) times its calls, which only a python processor does"
        raise TypeError(msg)
    return proc


def _among(traced: list[int], batch: Batch) -> list[int]:
    """The lines of ``batch`` among ``traced`` (a task's, ascending)."""
    if not traced:
        return []
    first = batch.nums[0]
    return traced[bisect_left(traced, first) : bisect_left(traced, first + len(batch.nums))]


class _StepTime:
    """The time of the step being observed, read once for a batch's two observers.

    It holds no reference to them: a cycle through a batch's observers kept every
    traced batch alive until the cyclic collector found it, and the collector's walks
    over their lists made --trace 14 % slower (found with callgrind: list_traverse).
    """

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Both:
    """A batch's two step observers (the /trace traces, the --save-traces records), told each step at one time."""

    def __init__(self, tracer: Any, recorder: Any, clock: _StepTime) -> None:
        self.tracer, self.recorder, self.clock = tracer, recorder, clock

    def step(self, *args: Any) -> None:
        self.clock.now = time.time()
        self.tracer.step(*args)
        self.recorder.step(*args)


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


def _error_record(
    pipeline: Pipeline, settings: TaskSettings, task: Task, p: int, num: int, text: str, exc: BaseException
) -> dict[str, Any]:
    name, given = settings.inputs[task.input]
    file_line = num - task.first_line + task.file_line
    return {
        "processor": pipeline.nodes[p].id,
        "line_id": f"{name}:{file_line}",
        "line_number": num,
        "file": given,
        "file_line": file_line,
        "line": text[:ERROR_LINE_CHARS],
        "error_type": type(exc).__name__,
        "message": str(exc),
        "timestamp": time.time(),
        "worker": settings.worker,
    }
