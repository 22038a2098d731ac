"""The stats segment: exact run counters in one int64 array on multiprocessing.shared_memory (numpy-shaped).

Its layout (rows, columns, what each value is) is described once, in ``mpobs.metrics.layout``.

Every read-modify-write and every snapshot holds ``lock`` (one process-shared
multiprocessing.Lock), through ``held()`` (``mpobs.metrics.lock``), which records the holder's pid in
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
from collections.abc import Callable, Sequence
from functools import cached_property
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any

from mpobs.metrics.histogram import BUCKETS
from mpobs.metrics.layout import DOING_FIELDS, INPUT_FIELDS, STATES, SYSTEM_FIELDS, WORKER_FIELDS, Layout
from mpobs.metrics.lock import HolderLock

if TYPE_CHECKING:
    import numpy as np

SEGMENT_PREFIX = "mpobs_"
SHM_DIR = "/dev/shm"
_HOLDER = SYSTEM_FIELDS.index("lock_holder")
_DOING_AT = WORKER_FIELDS.index(DOING_FIELDS[0])


class StatsSegment(HolderLock):
    """Views over the shared block. The creator unlinks it; everyone else only closes.

    ``held()`` and the rest of the lock's handling: ``mpobs.metrics.lock``.
    """

    def __init__(self, layout: Layout, shm: shared_memory.SharedMemory, lock: Any, owner: bool) -> None:
        self.layout = layout
        self.shm = shm
        self.lock = lock
        self.owner = owner
        assert shm.buf is not None  # an open segment
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
        return (
            flat[:w].reshape(layout.nrows, layout.ncols),
            flat[w:s].reshape(layout.slots, -1),
            flat[s : layout.inputs_at],
        )

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

    def system_value(self, name: str) -> int:
        """One run-wide value, read without the lock (a whole int64)."""
        return self._flat[self.layout.system_at + SYSTEM_FIELDS.index(name)]

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


class Snapshot:
    """A copy of the segment, with names for its values (plain ints)."""

    __slots__ = ("committed", "inputs", "layout", "live", "system", "workers")

    def __init__(
        self,
        layout: Layout,
        committed: list[int],
        live: list[int],
        workers: list[list[int]],
        system: list[int],
        inputs: list[list[int]],
    ) -> None:
        self.layout, self.committed, self.live, self.workers, self.system, self.inputs = (
            layout,
            committed,
            live,
            workers,
            system,
            inputs,
        )

    @classmethod
    def of(cls, layout: Layout, values: list[int]) -> Snapshot:
        nc, nw, w = layout.ncols, len(WORKER_FIELDS), layout.workers_at
        rows = [values[r * nc : (r + 1) * nc] for r in range(layout.nrows)]
        workers = [values[w + s * nw : w + (s + 1) * nw] for s in range(layout.slots)]
        ni, i = len(INPUT_FIELDS), layout.inputs_at
        inputs = [values[i + k * ni : i + (k + 1) * ni] for k in range(layout.inputs)]
        return cls(
            layout,
            rows[0],
            [sum(col) for col in zip(*rows)],
            workers,
            values[layout.system_at : layout.inputs_at],
            inputs,
        )

    def proc(self, p: int, fname: str, live: bool = True) -> int:
        return (self.live if live else self.committed)[self.layout.proc_col(p, fname)]

    def batch_hist(self, p: int, live: bool = True) -> list[int]:
        """Processor ``p``'s batch histogram: BUCKETS counts (``mpobs.metrics.histogram``)."""
        at = self.layout.batch_col(p)
        return (self.live if live else self.committed)[at : at + BUCKETS]

    def task_hist(self, live: bool = True) -> tuple[list[int], int]:
        """The histogram of task durations, and their total ns."""
        at, row = self.layout.task_col(), self.live if live else self.committed
        return row[at : at + BUCKETS], self.run("task_ns", live)

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

    from mpobs.lifeline import remove_left_over

    remove_left_over(SHM_DIR, re.compile(rf"^{SEGMENT_PREFIX}(\d+)_[0-9a-f]+$"), lambda m: not alive(int(m[1])))


def _zeros(n: int) -> memoryview:
    return memoryview(bytes(8 * n)).cast("q")
