"""The stats segment: exact run counters in one int64 array on multiprocessing.shared_memory (numpy-shaped).

This module alone knows the layout; everyone else asks ``Layout`` (columns, rows) or
``StatsSegment`` (operations) and reads through ``Snapshot``. One int64 block of
``Layout.size`` values, in this order:

``counts``  shape (2 + 2 * slots, ncols). Row 0 holds the committed totals: the
            tasks that are in the output. Row 1 holds tasks that are finished but
            wait for an earlier task before they can go into the output. Each
            local worker slot ``s`` owns two in-flight rows ``2 + 2*s`` and
            ``3 + 2*s`` and uses them by turns, one per task
            (``Layout.inflight_row``). A worker adds a task's counts to its row
            once per batch; when the task is finished the coordinator moves its
            counts to row 1 (``complete``: the local pool does, as it reads the
            worker's "done"), and from there to row 0 when its
            output is written (``commit``); when a worker dies its rows are
            zeroed (``drop``) and its tasks run again. An executor without
            in-flight rows (its results carry their counts) goes straight to
            ``complete``. Live totals are the sum of all rows; the committed row
            always matches the output.
            A row is a count vector (``Layout.vector``), ``ncols`` values:
            ``[p*PROC_WIDTH + f]`` for processor ``p`` (config order) and field ``f``
            in PROC_FIELDS, then at ``[p*PROC_WIDTH + NF + k]`` bucket ``k`` of the
            histogram of its batch calls' durations (``mpobs.histogram``); then, for
            each processor that times its calls (``Layout.timed``: ``python``),
            CALL_WIDTH values: the buckets of its function calls' durations and their
            sum in ns; then one column per tag (``Layout.tags``); then RUN_FIELDS.
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

Every read-modify-write and every snapshot holds ``lock`` (one process-shared
multiprocessing.Lock), through ``held()`` (``mpobs.seglock``), which records the holder's pid in
``system[lock_holder]``; a flush costs about a microsecond, so workers take it
once per batch and readers never stop them for longer.

The block is an int64 array that numpy views map exactly (``counts``, ``workers`` and
``system`` are numpy views, made when first asked for). The run's own writers and
readers work on a plain memoryview of it, adding a count vector (a list of ints) value by
value: a few microseconds per batch, and no process of a run imports numpy unless
something asks for it (a huge input's planning, tracing at a very low rate, a user
function), which saves 50-70 ms of start-up on every run (bench: small jobs).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from functools import cached_property
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from mpobs.histogram import BUCKETS
from mpobs.seglock import HolderLock

if TYPE_CHECKING:
    import numpy as np

#: What the DAG counts per processor (``Pipeline.run_batch`` fills them in this order).
PROC_FIELDS = ("lines_in", "lines_out", "errors", "time_ns", "batches")
NF = len(PROC_FIELDS)
#: Values per processor in a count vector: its fields, then its batch histogram.
PROC_WIDTH = NF + BUCKETS
#: Values per call-timing processor: its call histogram, then the calls' total ns.
CALL_WIDTH = BUCKETS + 1
RUN_FIELDS = ("lines_done", "bytes_done", "tasks_done")
#: What a worker is doing now, written by the worker alone, read without the lock (``doing``):
#: the processor it runs (index + 1; 0: none), the input and first line (in that input) of the
#: call, how many lines the call has, and when it began (``time.perf_counter_ns``: the
#: system's monotonic clock, the same in every process).
DOING_FIELDS = ("doing_proc", "doing_input", "doing_line", "doing_lines", "doing_since_ns")
WORKER_FIELDS = (
    "pid", "tasks", "lines", "bytes", "alive",
    "traces_sent", "traces_dropped", "errors_sent", "errors_dropped", *DOING_FIELDS,
)  # fmt: skip
_DOING_AT = WORKER_FIELDS.index(DOING_FIELDS[0])
SYSTEM_FIELDS = (
    "state", "started_at_ms", "ended_at_ms", "bytes_total", "workers", "workers_restarted",
    "tasks_total", "lines_total", "traces_delivered", "errors_delivered", "records_repeated",
    "dashboard_dropped", "checkpoint_at_ms", "checkpoint_lines", "checkpoint_output", "lock_holder",
    "output_reopens",
)  # fmt: skip
_HOLDER = SYSTEM_FIELDS.index("lock_holder")
INPUT_FIELDS = (
    "bytes_read", "bytes_total", "lines_read", "lines_done", "state", "compression",
    "following", "rotations", "lag_bytes", "last_line_ms",
)  # fmt: skip
#: An input's compression (a stream's is known once its first bytes are read): index here.
COMPRESSIONS = (None, "gzip", "bzip2", "xz", "zstd")
#: bytes_total of an input whose size is not known (a pipe).
UNKNOWN = -1
INPUT_STATES = ("waiting", "reading", "read", "done", "damaged")
SEGMENT_PREFIX = "mpobs_"
STATES = ("starting", "running", "done", "failed", "interrupted")


@dataclass(frozen=True)
class Layout:
    """Where each value lives; picklable, so children rebuild views from the name."""

    processors: tuple[str, ...]
    tags: tuple[str, ...]
    slots: int
    inputs: int = 1
    timed: tuple[int, ...] = ()  # processors (by index) with a histogram of their function calls

    @property
    def ncols(self) -> int:
        return self._tags_at + len(self.tags) + len(RUN_FIELDS)

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

    def columns(self) -> list[str]:
        """A name per column of a count vector: ``<processor>.<field>``, its buckets, ``tag:<tag>``, then RUN_FIELDS."""
        cols = []
        for p in self.processors:
            cols += [f"{p}.{f}" for f in PROC_FIELDS] + [f"{p}.batch_bucket:{k}" for k in range(BUCKETS)]
        for i in self.timed:
            p = self.processors[i]
            cols += [f"{p}.call_bucket:{k}" for k in range(BUCKETS)] + [f"{p}.call_ns"]
        return cols + [f"tag:{t}" for t in self.tags] + list(RUN_FIELDS)

    @staticmethod
    def inflight_row(slot: int, task_seq: int) -> int:
        return 2 + 2 * slot + (task_seq & 1)

    def vector(self, procs: Sequence[int], tags: Mapping[str, int], lines: int, nbytes: int, tasks: int,
               calls: Sequence[int] = ()) -> list[int]:  # fmt: skip
        """A count vector (one row, plain ints): ``procs`` is PROC_WIDTH values per processor, in config
        order; ``calls`` CALL_WIDTH values per timed processor, in ``timed`` order."""
        vec = [0] * self.ncols
        vec[: self._calls_at] = procs
        if calls:
            vec[self._calls_at : self._tags_at] = calls
        for tag, k in tags.items():
            vec[self.tag_col(tag)] += k
        for fname, value in zip(RUN_FIELDS, (lines, nbytes, tasks)):
            vec[self.run_col(fname)] = value
        return vec

    def row_at(self, row: int) -> int:
        """Where row ``row`` of ``counts`` starts in the block."""
        return row * self.ncols


class StatsSegment(HolderLock):
    """Views over the shared block. The creator unlinks it; everyone else only closes.

    ``held()`` and the rest of the lock's handling: ``mpobs.seglock``.
    """

    def __init__(self, layout: Layout, shm: shared_memory.SharedMemory, lock: Any, owner: bool) -> None:
        self.layout = layout
        self.shm = shm
        self.lock = lock
        self.owner = owner
        self._flat = shm.buf[: layout.size * 8].cast("q")  # the whole block as int64s, without numpy
        self._holder = layout.system_at + _HOLDER
        self.pid = os.getpid()
        self.on_stuck: Callable[[], None] | None = None

    @cached_property
    def _views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(counts, workers, system) as numpy views of the block, made when someone first asks."""
        import numpy as np

        layout = self.layout
        flat = np.ndarray((layout.size,), dtype=np.int64, buffer=self.shm.buf)
        w, s = layout.workers_at, layout.system_at
        return flat[:w].reshape(layout.nrows, layout.ncols), flat[w:s].reshape(layout.slots, -1), flat[s : layout.inputs_at]

    @property
    def counts(self) -> np.ndarray:
        return self._views[0]

    @property
    def workers(self) -> np.ndarray:
        return self._views[1]

    @property
    def system(self) -> np.ndarray:
        return self._views[2]

    @classmethod
    def create(cls, layout: Layout, lock: Any) -> StatsSegment:
        # A recognizable name with the owner's pid: a leftover can be traced to its run.
        name = f"{SEGMENT_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        shm = shared_memory.SharedMemory(name=name, create=True, size=layout.size * 8)
        seg = cls(layout, shm, lock, owner=True)
        seg._flat[:] = _zeros(layout.size)
        seg.set_system(started_at_ms=int(time.time() * 1000))
        return seg

    @classmethod
    def attach(cls, name: str, layout: Layout, lock: Any) -> StatsSegment:
        return cls(layout, shared_memory.SharedMemory(name=name), lock, owner=False)

    @property
    def name(self) -> str:
        return self.shm.name

    def close(self) -> None:
        # Views must go before the mapping can close.
        self.__dict__.pop("_views", None)
        self._flat.release()
        try:
            self.shm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes with the process
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass

    # -- writers ---------------------------------------------------------
    # Plain int arithmetic on the memoryview: a count vector has tens of values, and adding
    # them one by one costs a few microseconds per batch, where importing numpy would cost
    # every run 50-70 ms of start-up (bench: small jobs). Lock must be held by caller.
    def _add(self, at: int, vec: Sequence[int], sign: int = 1) -> None:
        flat = self._flat
        for i, v in enumerate(vec):
            if v:
                flat[at + i] += sign * v

    def _worker_at(self, slot: int, fname: str) -> int:
        return self.layout.workers_at + slot * len(WORKER_FIELDS) + WORKER_FIELDS.index(fname)

    def flush(self, row: int, delta: Sequence[int], slot: int | None = None, **worker_deltas: int) -> None:
        """Add a batch's counts to an in-flight row (and to worker ``slot``'s values, under the same lock)."""
        with self.held():
            self._add(self.layout.row_at(row), delta)
            for k, v in worker_deltas.items():
                self._flat[self._worker_at(slot, k)] += v  # type: ignore[arg-type]

    def complete(self, vec: Sequence[int], live_row: int | None = None) -> None:
        """A task is finished: its counts ``vec`` become pending (out of its in-flight row, if it had one)."""
        with self.held():
            self._add(self.layout.row_at(1), vec)
            if live_row is not None:
                self._add(self.layout.row_at(live_row), vec, -1)  # the row held exactly these: zero again

    def commit(self, vec: Sequence[int]) -> None:
        """A finished task's output is written: its counts become committed."""
        with self.held():
            self._add(self.layout.row_at(1), vec, -1)
            self._add(self.layout.row_at(0), vec)

    def restore(self, vec: Sequence[int]) -> None:
        """Start from a checkpoint: its committed counts are the committed row."""
        with self.held():
            self._add(self.layout.row_at(0), vec)

    def uncomplete(self, vec: Sequence[int]) -> None:
        """A finished task's output died with its worker before it was written: it runs again."""
        with self.held():
            self._add(self.layout.row_at(1), vec, -1)

    def drop(self, slot: int) -> None:
        """A worker died: forget its uncommitted counts (its tasks run again)."""
        nc = self.layout.ncols
        with self.held():
            for seq in (0, 1):
                at = self.layout.row_at(self.layout.inflight_row(slot, seq))
                self._flat[at : at + nc] = _zeros(nc)

    def doing(self, slot: int) -> memoryview:
        """Worker ``slot``'s DOING_FIELDS, for the worker to write in place (``Pipeline.watch``)."""
        at = self.layout.workers_at + slot * len(WORKER_FIELDS) + _DOING_AT
        return self._flat[at : at + len(DOING_FIELDS)]

    def doing_now(self, slot: int) -> dict[str, int]:
        """What worker ``slot`` is doing now, and whether it is ``alive`` (no lock: one writer, whole int64 values)."""
        got = dict(zip(DOING_FIELDS, self.doing(slot).tolist()))
        got["alive"] = self._flat[self._worker_at(slot, "alive")]
        return got

    def add_worker(self, slot: int, **deltas: int) -> None:
        """Add to a worker slot's values (tasks, lines, bytes, records sent and dropped)."""
        with self.held():
            for k, v in deltas.items():
                self._flat[self._worker_at(slot, k)] += v

    def set_worker(self, slot: int, **values: int) -> None:
        with self.held():
            for k, v in values.items():
                self._flat[self._worker_at(slot, k)] = v

    def set_system(self, **values: int) -> None:
        at = self.layout.system_at
        with self.held():
            for k, v in values.items():
                self._flat[at + SYSTEM_FIELDS.index(k)] = v

    def set_input(self, k: int, **values: int) -> None:
        at = self.layout.inputs_at + k * len(INPUT_FIELDS)
        with self.held():
            for name, v in values.items():
                self._flat[at + INPUT_FIELDS.index(name)] = v

    def add_input(self, k: int, **deltas: int) -> None:
        at = self.layout.inputs_at + k * len(INPUT_FIELDS)
        with self.held():
            for name, v in deltas.items():
                self._flat[at + INPUT_FIELDS.index(name)] += v

    def set_state(self, state: str) -> None:
        self.set_system(state=STATES.index(state))

    def live_errors(self) -> int:
        """Processor errors counted so far, in flight included (--max-errors)."""
        layout, flat = self.layout, self._flat
        cols = [layout.proc_col(p, "errors") for p in range(len(layout.processors))]
        with self.held():
            return sum(flat[layout.row_at(r) + c] for r in range(layout.nrows) for c in cols)

    # -- readers ---------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """A consistent copy: committed totals, live totals (committed + in flight), the rest."""
        with self.held():
            raw = self._flat.tobytes()  # one copy under the lock; the ints are made after it
        return Snapshot.of(self.layout, memoryview(raw).cast("q").tolist())


@dataclass
class Snapshot:
    """A copy of the segment, with names for its values (plain ints)."""

    layout: Layout
    committed: list[int]
    live: list[int]
    workers: list[list[int]]
    system: list[int]
    inputs: list[list[int]]

    @classmethod
    def of(cls, layout: Layout, values: list[int]) -> Snapshot:
        nc, nw, w = layout.ncols, len(WORKER_FIELDS), layout.workers_at
        rows = [values[r * nc : (r + 1) * nc] for r in range(layout.nrows)]
        workers = [values[w + s * nw : w + (s + 1) * nw] for s in range(layout.slots)]
        ni, i = len(INPUT_FIELDS), layout.inputs_at
        inputs = [values[i + k * ni : i + (k + 1) * ni] for k in range(layout.inputs)]
        return cls(layout, rows[0], [sum(col) for col in zip(*rows)], workers,
                   values[layout.system_at : layout.inputs_at], inputs)  # fmt: skip

    def proc(self, p: int, fname: str, live: bool = True) -> int:
        return (self.live if live else self.committed)[self.layout.proc_col(p, fname)]

    def batch_hist(self, p: int, live: bool = True) -> list[int]:
        """Processor ``p``'s batch histogram: BUCKETS counts (``mpobs.histogram``)."""
        at = self.layout.batch_col(p)
        return (self.live if live else self.committed)[at : at + BUCKETS]

    def call_hist(self, p: int, live: bool = True) -> tuple[list[int], int]:
        """Timed processor ``p``'s call histogram, and its calls' total ns."""
        at = self.layout.call_col(p)
        row = self.live if live else self.committed
        return row[at : at + BUCKETS], row[at + BUCKETS]

    def tag(self, tag: str, live: bool = True) -> int:
        return (self.live if live else self.committed)[self.layout.tag_col(tag)]

    def run(self, fname: str, live: bool = True) -> int:
        return (self.live if live else self.committed)[self.layout.run_col(fname)]

    def sys(self, fname: str) -> int:
        return self.system[SYSTEM_FIELDS.index(fname)]

    @property
    def state(self) -> str:
        return STATES[self.sys("state")]

    def worker(self, slot: int) -> dict[str, int]:
        return dict(zip(WORKER_FIELDS, self.workers[slot]))

    def input(self, k: int) -> dict[str, int]:
        return dict(zip(INPUT_FIELDS, self.inputs[k]))


def remove_leftover_segments(alive: Callable[[int], bool]) -> None:
    """Unlink segments of runs whose owner (the pid in the name) is dead: a killed process group leaves them."""
    import re

    pattern = re.compile(rf"^{SEGMENT_PREFIX}(\d+)_[0-9a-f]+$")
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m is not None and not alive(int(m[1])):
            try:
                os.unlink(os.path.join("/dev/shm", name))
            except OSError:
                pass


def _zeros(n: int) -> memoryview:
    return memoryview(bytes(8 * n)).cast("q")
