"""The local pool's pipe protocol: every message the pool and a worker send each other, one class each.

Each worker has a duplex ``multiprocessing`` Pipe to the pool; messages are pickled
objects of the classes below, matched by class on arrival (``match`` or ``isinstance``).

Pool to worker:

- ``RunTask(task, seq)``: run ``task`` (``LocalPool.submit``). ``seq`` numbers the slot's
  tasks from 0; the worker counts the task into in-flight row ``Layout.inflight_row(slot,
  seq)`` while it runs. Up to PREFETCH are handed out ahead; the worker runs them in the
  order they came and answers each with ``Done``.
- ``Place(index, offset)``: only when workers write the output file themselves
  (``out_fd``): task ``index``'s output starts at ``offset`` of it (``LocalPool.place``,
  once every task before it is written). The worker writes it there at once if the task
  is finished, batch by batch if it is running, or as it runs if it has not started; then
  answers ``Written``. Read between batches too, so no grant waits behind a long task.
- ``Reopen()``: the output is another file now (SIGHUP). The new file's descriptor follows
  at once on the same pipe (``multiprocessing.reduction.send_handle``); the worker puts it
  in place of its ``out_fd``. Sent only while nothing is placed.
- ``Stop()``: run what was handed out, then exit (``LocalPool.shutdown``; a stop at once is
  the stop event, not a message). The pipe closing stops a worker too.

Worker to pool:

- ``Done(seq, result)``: task number ``seq`` of the slot is finished, in order. The pool
  moves ``result.counts`` from the in-flight row to the pending row and reports
  ``TaskDone``; with ``out_fd`` it holds the task until ``Written``, otherwise the output
  is a part file (``mpobs.executors.parts``).
- ``Written(index)``: all of task ``index``'s output is in the file where it was placed
  (always after its ``Done``); the pool reports ``TaskWritten``.
- ``Fatal(detail, io)``: the worker is exiting on an error that running again cannot mend;
  the pool reports ``WorkerFailed`` and the run fails. ``io``: the output could not be
  written (``detail`` says why: a full disk); otherwise ``detail`` is a traceback, of
  which the pool shows the last line.

A worker that dies says nothing: the pool sees its process sentinel and reports its
tasks as lost (``LocalPool._died``).

Plain classes with ``__slots__``: this module is imported at every run's start, where a
named tuple costs ~0.15 ms to define and a frozen dataclass ~0.4 ms, and one message
goes each way per task. Each pickles as its class and its fields (``__reduce__``): a few
bytes more than the bare tuples they replace, not the slot names as well.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpobs.executors.task import TaskResult
    from mpobs.inputs.base import Task


# -- pool to worker -------------------------------------------------------------------
class RunTask:
    """Run ``task``, the slot's task number ``seq``."""

    __slots__ = ("seq", "task")

    def __init__(self, task: Task, seq: int) -> None:
        self.task, self.seq = task, seq

    def __reduce__(self) -> tuple[Any, ...]:
        return RunTask, (self.task, self.seq)


class Place:
    """Task ``index``'s output starts at ``offset`` of the output file: write it there."""

    __slots__ = ("index", "offset")

    def __init__(self, index: int, offset: int) -> None:
        self.index, self.offset = index, offset

    def __reduce__(self) -> tuple[Any, ...]:
        return Place, (self.index, self.offset)


class Reopen:
    """The output is another file; its descriptor follows on the pipe."""

    __slots__ = ()


class Stop:
    """Run what was handed out, then exit."""

    __slots__ = ()


ToWorker = RunTask | Place | Reopen | Stop


# -- worker to pool -------------------------------------------------------------------
class Done:
    """The slot's task number ``seq`` is finished; ``result`` is its result (its output aside)."""

    __slots__ = ("result", "seq")

    def __init__(self, seq: int, result: TaskResult) -> None:
        self.seq, self.result = seq, result

    def __reduce__(self) -> tuple[Any, ...]:
        return Done, (self.seq, self.result)


class Written:
    """All of task ``index``'s output is in the output file where it was placed."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return Written, (self.index,)


class Fatal:
    """The worker exits on an error running again cannot mend; ``io``: writing the output failed."""

    __slots__ = ("detail", "io")

    def __init__(self, detail: str, io: bool) -> None:
        self.detail, self.io = detail, io

    def __reduce__(self) -> tuple[Any, ...]:
        return Fatal, (self.detail, self.io)


ToPool = Done | Written | Fatal
