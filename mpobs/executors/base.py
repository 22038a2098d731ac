"""The Executor seam: the one interface the coordinator drives to run tasks, and what it reports.

An executor runs tasks somewhere (local processes, a cluster, the test suite's
in-process one) and reports what happened as events from ``poll``. It never
decides what runs next (``mpobs.run.scheduler``), nor when a result's counts count
(``mpobs.run.ordered_output``): the coordinator commits a task's counts when its output is in
the output, so a task that is lost and runs again never counts twice, whatever
the executor.

Lifecycle: ``prepare``, ``block_store`` (when the input has blocks), ``start(ctx)``;
then ``submit`` while ``room()`` says so, and ``poll``;
``shutdown`` always, whatever happened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpobs.executors.task import TaskResult, TaskSettings
    from mpobs.inputs.base import Task
    from mpobs.inputs.blockstore import BlockStore
    from mpobs.metrics.segment import StatsSegment
    from mpobs.pipeline.dag import Pipeline
    from mpobs.tracing.records import EventCollector


class TaskDone:
    """A task finished; its result carries its counts, records and output (or the promise to write it)."""

    __slots__ = ("result", "task")

    def __init__(self, task: Task, result: TaskResult) -> None:
        self.task, self.result = task, result


class TaskWritten:
    """The executor wrote task ``index``'s output where ``place`` put it: it is in the output now."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


class TaskLost:
    """A task's work is gone and it must run again.

    ``fault``: it was running when its worker died (it may be what killed it; a task
    lost three times so fails the run). ``finished``: it had been reported done, but
    its output died with its worker before it was written. ``reason`` is for people.
    ``where``: what it was doing when its worker died (``mpobs.metrics.activity.describe``), if known.
    """

    __slots__ = ("fault", "finished", "reason", "task", "where")

    def __init__(
        self, task: Task, reason: str, fault: bool = False, finished: bool = False, where: str | None = None
    ) -> None:
        self.task, self.reason, self.fault, self.finished, self.where = task, reason, fault, finished, where


class WorkerFailed:
    """A worker failed in a way that running again cannot mend (a bug, a broken set-up): the run fails.

    ``io``: it could not write the output (a full disk): an I/O error of the run, not a bug.
    """

    __slots__ = ("detail", "io", "worker")

    def __init__(self, worker: str, detail: str, io: bool = False) -> None:
        self.worker, self.detail, self.io = worker, detail, io

    def message(self, output: str | None) -> str:
        """What the run says when it fails of this."""
        if self.io:  # what is committed stays in the output (and in the last checkpoint)
            return f"I/O error: cannot write the output {output!r}: {self.detail}"
        return (f"worker {self.worker} failed: " if self.worker else "") + self.detail  # "": the executor as a whole


class LimitReached:
    """Workers stopped by themselves because the run reached ``--max-errors``."""

    __slots__ = ()


#: Plain classes, not named tuples or dataclasses: these are made at every run's start,
#: where a named tuple costs ~0.15 ms to define and a frozen dataclass ~0.4 ms.
Event = TaskDone | TaskWritten | TaskLost | WorkerFailed | LimitReached


class RunContext:
    """What an executor is given to run a run's tasks.

    ``segment``: live in-flight counts, if the executor keeps any; never the committed rows.
    ``collector``: where records that travel apart from results go. ``wait_traces``: every
    trace must be delivered (--save-traces): wait, never drop. ``out_fd``: the output file,
    if the executor may write tasks' output into it itself. ``store``: from its
    ``block_store``, when the input has blocks. ``call_timeout``: --call-timeout, a python
    processor's call running longer is stopped.
    """

    __slots__ = ("call_timeout", "collector", "out_fd", "pipeline", "segment", "settings", "store", "wait_traces")

    def __init__(
        self,
        pipeline: Pipeline,
        settings: TaskSettings,
        segment: StatsSegment,
        collector: EventCollector,
        wait_traces: bool = False,
        out_fd: int | None = None,
        store: BlockStore | None = None,
        call_timeout: float | None = None,
    ) -> None:
        self.pipeline, self.settings, self.segment, self.collector = pipeline, settings, segment, collector
        self.wait_traces, self.out_fd, self.store, self.call_timeout = wait_traces, out_fd, store, call_timeout


class Executor(ABC):
    """Runs tasks; see the module docstring."""

    #: Short name for the summary and /stats.
    name = "executor"
    #: Whether ``place`` works: the executor writes a task's output itself, at an offset.
    writes_output = False
    #: Workers started again after dying (shown in the stats).
    restarted = 0

    @property
    @abstractmethod
    def capacity(self) -> int:
        """How many tasks it runs at once (the scheduler's backlog scales with it)."""

    def prepare(self, pipeline: Pipeline, files: list[str]) -> None:
        """Before anything is written: check that the run can work there (raise InputError, exit 2, if not).

        ``files``: the input files whose tasks are read by path (not shipped as blocks).
        """

    @abstractmethod
    def start(self, ctx: RunContext) -> None: ...

    @abstractmethod
    def room(self) -> int:
        """How many more tasks it takes now."""

    @abstractmethod
    def submit(self, task: Task) -> None: ...

    @abstractmethod
    def poll(self, timeout: float, wake: Sequence[int] = ()) -> list[Event]:
        """Wait up to ``timeout`` seconds for something to happen; return what did.

        It returns early, maybe with no event, when one of the fds in ``wake`` is
        readable (the input has a new block ready to plan).
        """

    @abstractmethod
    def shutdown(self, graceful: bool) -> None:
        """Stop: after the tasks it has (graceful) or now. Always called; must not raise."""

    def block_store(self, slots: int, slot_bytes: int) -> BlockStore:
        """Where blocks of a stream or compressed input wait for their tasks; made before ``start``.

        The default keeps them in this process: an executor that ships a block's bytes
        with its task (``Task.read(store)``) needs no more.
        """
        from mpobs.inputs.blockstore import BlockStore

        return BlockStore.in_memory(slots, slot_bytes)

    def place(self, index: int, offset: int) -> bool:
        """Write task ``index``'s output at ``offset`` of ``ctx.out_fd``, now or when it is done.

        Only with ``writes_output``; False when the executor does not hold the task
        (not submitted yet). ``TaskWritten`` follows once the bytes are there.
        """
        return False

    def reopen_output(self, fd: int) -> None:
        """``ctx.out_fd`` names another file now (SIGHUP); only with ``writes_output``.

        Called when no task is placed: what is placed from now on goes into the new file.
        """

    def view(self) -> dict[str, Any] | None:
        """What /stats shows of where tasks run, beyond the segment's worker rows (a cluster's workers), or None."""
        return None

    def stop_restarts(self) -> None:
        """The run is stopping (a signal): a worker that dies now is not started again."""

    def dead_pids(self) -> set[int]:
        """Processes of its own that may have died holding the segment's lock (see ``segment.held``)."""
        return set()

    def any_alive(self) -> bool:
        """Whether any of its processes that use the segment's lock are alive."""
        return False
