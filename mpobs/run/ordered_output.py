"""Ordered output: finished tasks go into the output in task order, and only then count."""

from __future__ import annotations

import os
from collections.abc import Callable

from mpobs.executors.base import Executor
from mpobs.executors.task import TaskResult
from mpobs.inputs.base import Task
from mpobs.output.joiner import OutputJoiner


class OrderedOutput:
    """Puts tasks into ``sink`` in task order; ``commit`` is called for each as it goes in.

    A finished task waits here until every task before it is in the output. Its
    output is bytes (written here), a part file (joined here, the kernel copying), or,
    with an executor that ``writes_output`` into our own file, written by the
    executor: once every task before one is written, that task is ``place``d at the
    offset where its output starts (a task run again after a crash may differ in
    size, so no offset is given earlier) and ``TaskWritten`` says it is there. Either
    way its counts are committed when it is in the output, and never before.
    """

    def __init__(
        self,
        sink: OutputJoiner,
        executor: Executor,
        commit: Callable[[Task, TaskResult], None],
        reopened: Callable[[OutputJoiner, str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.executor = executor
        self.commit = commit
        self.reopened = reopened  # told after the output was reopened, before anything goes into the new file
        self.reopen_asked = False  # SIGHUP: reopen at the next task boundary
        self.placed_by_executor = sink.direct and executor.writes_output
        self.next = 0  # the next task to go into the output
        self.waiting: dict[int, tuple[Task, TaskResult]] = {}  # finished, not yet in the output
        self.placing = False  # the executor has been told where task `next` goes

    def done(self, task: Task, result: TaskResult) -> None:
        self.waiting[task.index] = (task, result)

    def lost(self, task: Task) -> TaskResult | None:
        """``task`` runs again: forget it; returns its result if it had finished (its counts were pending)."""
        if task.index == self.next:
            self.placing = False  # whatever it wrote is past the committed end; its next run writes over it
        entry = self.waiting.pop(task.index, None)
        return entry[1] if entry is not None else None

    def written(self, index: int) -> None:
        """The executor wrote the output of ``index`` where it was placed."""
        assert self.placing and index == self.next, (index, self.next)
        self.placing = False
        task, result = self.waiting.pop(index)
        self.sink.bytes_written += result.out_bytes
        self._in_output(task, result)

    def advance(self) -> None:
        """Put into the output what is next in task order, as far as it is finished."""
        while not self.placing:
            if self.reopen_asked:  # a task boundary: every task before `next` is in the file, none placed after
                self._reopen()
            if self.placed_by_executor and self.executor.place(self.next, self.sink.at):
                self.placing = True
                return
            entry = self.waiting.get(self.next)
            if entry is None:
                return
            task, result = entry
            if result.output is None:  # the executor was to write it, and says it does not hold it
                msg = f"internal error: the {self.executor.name} executor lost track of task {self.next}"
                raise RuntimeError(msg)
            del self.waiting[self.next]
            if isinstance(result.output, str):  # a part file
                self.sink.append(result.output)
                os.unlink(result.output)
            else:
                self.sink.write(result.output)
            self._in_output(task, result)

    def _reopen(self) -> None:
        self.reopen_asked = False
        what = self.sink.reopen()
        if what is None:
            return
        if self.reopened is not None:
            self.reopened(self.sink, what)  # e.g. a checkpoint naming the new file, before anything is in it
        if self.placed_by_executor:
            self.executor.reopen_output(self.sink.fd)

    def _in_output(self, task: Task, result: TaskResult) -> None:
        self.next += 1
        self.commit(task, result)
