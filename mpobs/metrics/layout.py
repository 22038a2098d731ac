"""The stats segment's layout: where every value of the one int64 block lives.

This module alone describes the layout; everyone else asks ``Layout`` (columns, rows),
``mpobs.metrics.segment.StatsSegment`` (operations) and reads through ``mpobs.metrics.segment.Snapshot``.
One int64 block of ``Layout.size`` values, in this order:

``counts``  shape (2 + 2 * slots, ncols). Row 0 holds the committed totals: the
            tasks that are in the output. Row 1 holds tasks that are finished but
            wait for an earlier task before they can go into the output. Each
            local worker slot ``s`` owns two in-flight rows ``2 + 2*s`` and
            ``3 + 2*s`` and uses them by turns, one per task
            (``Layout.inflight_row``). A worker adds a task's counts to its row
            once per batch; when the task is finished the coordinator moves its
            counts to row 1 (``complete``: the local pool does, as it reads the
            worker's ``Done`` message), and from there to row 0 when its
            output is written (``commit``); when a worker dies its rows are
            zeroed (``drop``) and its tasks run again. An executor without
            in-flight rows (its results carry their counts) goes straight to
            ``complete``. Live totals are the sum of all rows; the committed row
            always matches the output.
            A row is a count vector (``Layout.vector``), ``ncols`` values:
            ``[p*PROC_WIDTH + f]`` for processor ``p`` (config order) and field ``f``
            in PROC_FIELDS, then at ``[p*PROC_WIDTH + NF + k]`` bucket ``k`` of the
            histogram of its batch calls' durations (``mpobs.metrics.histogram``); then, for
            each processor that times its calls (``Layout.timed``: ``python``),
            CALL_WIDTH values: the buckets of its function calls' durations and their
            sum in ns; then one column per tag (``Layout.tags``); then RUN_FIELDS; then
            the histogram of task durations (BUCKETS: the last batch of a task adds its
            ``task_ns`` and a 1 in its bucket).
``workers`` shape (slots, len(WORKER_FIELDS)): per worker slot, never rolled back; its
            DOING_FIELDS say what the worker is doing now (its stalls and deaths are named
            by them).
``system``  shape (len(SYSTEM_FIELDS),): run-wide values set by the coordinator.
``inputs``  shape (inputs, len(INPUT_FIELDS)): per input of the run, in the order given,
            set by the coordinator: bytes read (compressed bytes for a compressed
            input) and its size when known, lines read and committed, and its state
            (INPUT_STATES), and its compression (COMPRESSIONS: a stream's is
            known once its first bytes are read); for a followed file (--follow)
            whether it is being followed, its rotations, the bytes it holds beyond
            what was read, and when its last lines were read (ms since the epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from mpobs.metrics.histogram import BUCKETS, bucket_of

#: What the DAG counts per processor (``Pipeline.run_batch`` fills them in this order).
PROC_FIELDS = ("lines_in", "lines_out", "errors", "time_ns", "batches")
NF = len(PROC_FIELDS)
#: Values per processor in a count vector: its fields, then its batch histogram.
PROC_WIDTH = NF + BUCKETS
#: Values per call-timing processor: its call histogram, then the calls' total ns.
CALL_WIDTH = BUCKETS + 1
RUN_FIELDS = ("lines_done", "bytes_done", "tasks_done", "task_ns", "traces_skipped")
#: What a worker is doing now, written by the worker alone, read without the lock (``doing``):
#: the processor it runs (index + 1; 0: none), the input and first line (in that input) of the
#: call, how many lines the call has, and when it began (``time.perf_counter_ns``: the
#: system's monotonic clock, the same in every process).
DOING_FIELDS = ("doing_proc", "doing_input", "doing_line", "doing_lines", "doing_since_ns")
#: Where a local worker's time went: running tasks, waiting for a task, and the part of that
#: wait while the run was held by its output (``mpobs.metrics.activity.OutputWait``: the backlog full, or
#: the coordinator blocked writing the output).
TIME_FIELDS = ("busy_ns", "waiting_ns", "output_wait_ns")
WORKER_FIELDS = (
    "pid",
    "tasks",
    "lines",
    "bytes",
    "alive",
    "traces_sent",
    "traces_dropped",
    "errors_sent",
    "errors_dropped",
    *DOING_FIELDS,
    *TIME_FIELDS,
)
SYSTEM_FIELDS = (
    "state",
    "started_at_ms",
    "ended_at_ms",
    "bytes_total",
    "workers",
    "workers_restarted",
    "tasks_total",
    "lines_total",
    "traces_delivered",
    "errors_delivered",
    "records_repeated",
    "dashboard_dropped",
    "checkpoint_at_ms",
    "checkpoint_lines",
    "checkpoint_output",
    "lock_holder",
    "output_reopens",
    "output_held_ns",
    "output_held_since_ns",
)
INPUT_FIELDS = (
    "bytes_read",
    "bytes_total",
    "lines_read",
    "lines_done",
    "state",
    "compression",
    "following",
    "rotations",
    "lag_bytes",
    "last_line_ms",
)
#: An input's compression (a stream's is known once its first bytes are read): index here.
COMPRESSIONS = (None, "gzip", "bzip2", "xz", "zstd")
#: bytes_total of an input whose size is not known (a pipe).
UNKNOWN = -1
INPUT_STATES = ("waiting", "reading", "read", "done", "damaged")
STATES = ("starting", "running", "done", "failed", "interrupted")


class Layout(NamedTuple):
    """Where each value lives; picklable, so children rebuild views from the name."""

    processors: tuple[str, ...]
    tags: tuple[str, ...]
    slots: int
    inputs: int = 1
    timed: tuple[int, ...] = ()  # processors (by index) with a histogram of their function calls

    @property
    def ncols(self) -> int:
        return self.task_col() + BUCKETS

    @property
    def _calls_at(self) -> int:
        return len(self.processors) * PROC_WIDTH

    @property
    def _tags_at(self) -> int:
        return self._calls_at + len(self.timed) * CALL_WIDTH

    @property
    def nrows(self) -> int:
        return 2 + 2 * self.slots

    @property
    def workers_at(self) -> int:
        """Where ``workers`` starts in the block (after ``counts``)."""
        return self.nrows * self.ncols

    @property
    def system_at(self) -> int:
        """Where ``system`` starts in the block (after ``workers``)."""
        return self.workers_at + self.slots * len(WORKER_FIELDS)

    @property
    def inputs_at(self) -> int:
        """Where ``inputs`` starts in the block (after ``system``)."""
        return self.system_at + len(SYSTEM_FIELDS)

    @property
    def size(self) -> int:
        return self.inputs_at + self.inputs * len(INPUT_FIELDS)

    def proc_col(self, p: int, fname: str) -> int:
        return p * PROC_WIDTH + PROC_FIELDS.index(fname)

    def batch_col(self, p: int) -> int:
        """Where processor ``p``'s batch histogram (BUCKETS values) starts."""
        return p * PROC_WIDTH + NF

    def call_col(self, p: int) -> int:
        """Where processor ``p``'s call histogram (BUCKETS values, then their sum in ns) starts; ``p`` must be timed."""
        return self._calls_at + self.timed.index(p) * CALL_WIDTH

    def tag_col(self, tag: str) -> int:
        return self._tags_at + self.tags.index(tag)

    def run_col(self, fname: str) -> int:
        return self._tags_at + len(self.tags) + RUN_FIELDS.index(fname)

    def task_col(self) -> int:
        """Where the histogram of task durations (BUCKETS values) starts."""
        return self._tags_at + len(self.tags) + len(RUN_FIELDS)

    def columns(self) -> list[str]:
        """A name per column of a count vector: ``<processor>.<field>``, its buckets, ``tag:<tag>``, then RUN_FIELDS."""
        cols = []
        for p in self.processors:
            cols += [f"{p}.{f}" for f in PROC_FIELDS] + [f"{p}.batch_bucket:{k}" for k in range(BUCKETS)]
        for i in self.timed:
            p = self.processors[i]
            cols += [f"{p}.call_bucket:{k}" for k in range(BUCKETS)] + [f"{p}.call_ns"]
        return cols + [f"tag:{t}" for t in self.tags] + list(RUN_FIELDS) + [f"task_bucket:{k}" for k in range(BUCKETS)]

    @staticmethod
    def inflight_row(slot: int, task_seq: int) -> int:
        return 2 + 2 * slot + (task_seq & 1)

    def vector(
        self,
        procs: Sequence[int],
        tags: Mapping[str, int],
        lines: int,
        nbytes: int,
        tasks: int,
        calls: Sequence[int] = (),
        task_ns: int | None = None,
    ) -> list[int]:
        """A count vector (one row, plain ints): ``procs`` is PROC_WIDTH values per processor, in config
        order; ``calls`` CALL_WIDTH values per timed processor, in ``timed`` order."""
        vec = [0] * self.ncols
        vec[: self._calls_at] = procs
        if calls:
            vec[self._calls_at : self._tags_at] = calls
        for tag, k in tags.items():
            vec[self.tag_col(tag)] += k
        if task_ns is not None:  # the task's last batch: how long the whole task took
            vec[self.run_col("task_ns")] = task_ns
            vec[self.task_col() + bucket_of(task_ns)] = 1
        for fname, value in zip(RUN_FIELDS, (lines, nbytes, tasks)):
            vec[self.run_col(fname)] = value
        return vec

    def row_at(self, row: int) -> int:
        """Where row ``row`` of ``counts`` starts in the block."""
        return row * self.ncols
