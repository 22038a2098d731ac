"""The test executor: runs tasks in this process, and finishes, loses and reorders them adversarially.

It implements the Executor seam and nothing else: the real coordinator, scheduler and
ordered output drive it, with no process, queue or in-flight row involved. Results
carry their counts and records. With ``writes_output`` it also plays an executor
that writes tasks' output itself (as the local pool does): it keeps finished output
until the task is placed, writes it later, and sometimes loses a finished task whose
output it still holds. ``mpobs.testing`` runs pipelines on it, for tests.
"""

from __future__ import annotations

import os
import random
from typing import Any

from mpobs.executors.base import Event, Executor, RunContext, TaskDone, TaskLost, TaskWritten
from mpobs.executors.task import KeptRecords, run_task
from mpobs.inputs.base import Task


class AdversarialExecutor(Executor):
    """``lose``: chance that a task's run is lost (its worker "dies"); ``always_lose``: tasks lost every time."""

    name = "adversarial"

    def __init__(
        self,
        capacity: int = 4,
        seed: int = 0,
        lose: float = 0.2,
        writes_output: bool = False,
        always_lose: frozenset[int] = frozenset(),
    ) -> None:
        self._capacity = capacity
        self.rng = random.Random(seed)
        self.lose = lose
        self.writes_output = writes_output
        self.always_lose = always_lose
        self.queued: list[Task] = []
        self.held: dict[int, tuple[Task, bytes]] = {}  # finished, output not yet written (writes_output)
        self.placed: dict[int, int] = {}  # index -> offset, for tasks placed before they finished
        self.to_write: list[int] = []
        self.runs = 0
        self.losses = 0
        self.faults: dict[int, int] = {}
        self.started = self.stopped = False

    @property
    def capacity(self) -> int:
        return self._capacity

    def start(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.started = True
        self.fd = ctx.out_fd if self.writes_output else None

    def room(self) -> int:
        return self._capacity - len(self.queued)  # finished outputs it holds wait outside it, as in the pool

    def submit(self, task: Task) -> None:
        self.queued.append(task)

    def place(self, index: int, offset: int) -> bool:
        if index in self.held:
            self.placed[index] = offset
            self.to_write.append(index)
            return True
        if any(t.index == index for t in self.queued):
            self.placed[index] = offset
            return True
        return False

    def poll(self, timeout: float, wake: Any = ()) -> list[Event]:
        events: list[Event] = []
        rng = self.rng
        # Write some placed outputs, but not all at once.
        for index in list(self.to_write):
            if rng.random() < 0.5:
                continue
            self.to_write.remove(index)
            _, data = self.held.pop(index)
            os.pwrite(self.fd, data, self.placed.pop(index))  # type: ignore[arg-type]
            events.append(TaskWritten(index))
        # Sometimes a finished task's output dies with its "worker" before it is written.
        for index in list(self.held):
            if index not in self.to_write and rng.random() < self.lose / 4:
                task, _ = self.held.pop(index)
                self.placed.pop(index, None)
                self.losses += 1
                events.append(TaskLost(task, "its output died with its worker", finished=True))
        # Run a random part of the queue, in random order.
        rng.shuffle(self.queued)
        take = self.queued[: rng.randint(0, len(self.queued))]
        self.queued = self.queued[len(take) :]
        for task in take:
            events.append(self._run(task))
        return events

    def _run(self, task: Task) -> Event:
        self.runs += 1
        if task.index in self.always_lose or self.rng.random() < self.lose:
            self.losses += 1
            self.placed.pop(task.index, None)
            # It was running (a fault: three of those fail the run), or only waited on the worker that died.
            fault = task.index in self.always_lose or (self.faults.get(task.index, 0) < 2 and self.rng.random() < 0.5)
            if fault:
                self.faults[task.index] = self.faults.get(task.index, 0) + 1
            return TaskLost(task, "its worker died", fault=fault)
        ctx, out, records = self.ctx, bytearray(), KeptRecords()
        layout = ctx.segment.layout
        result = run_task(task, ctx.pipeline, layout, ctx.settings, out.extend, None, records, store=ctx.store)
        assert result is not None
        records.attach(result)
        if self.fd is None:
            result.output = bytes(out)
        else:
            self.held[task.index] = (task, bytes(out))
            if task.index in self.placed:
                self.to_write.append(task.index)
        return TaskDone(task, result)

    def shutdown(self, graceful: bool) -> None:
        self.stopped = True
        if self.started:
            snap = self.ctx.segment.snapshot()  # the coordinator has committed all it will
            self.live_at_end, self.committed_at_end = snap.live, snap.committed
