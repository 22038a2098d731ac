"""Which task runs next: tasks that must run again first, then the plan, never too far ahead of the output."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from mpobs.defaults import MAX_TASK_ATTEMPTS
from mpobs.inputs.base import NOT_READY, Task


class GiveUp(Exception):
    """A task killed its worker MAX_TASK_ATTEMPTS times; every task before it is in the output."""


class Scheduler:
    """Hands out tasks from ``plan`` and takes lost ones back.

    ``plan`` yields Tasks, or NOT_READY while the input is not read that far.

    At most ``backlog`` tasks are planned but not yet in the output: when one task
    stalls, the others' finished output waits for it, so no more is started. A task
    lost while running (``fault``) MAX_TASK_ATTEMPTS times makes the run give up once
    every task before it is in the output; tasks after it are not started any more.
    """

    def __init__(self, plan: Iterator[Any], backlog: int, max_attempts: int = MAX_TASK_ATTEMPTS) -> None:
        self.plan = plan
        self.backlog = backlog
        self.max_attempts = max_attempts
        self.retry: list[Task] = []  # sorted by index: the task the output waits for may be among them
        self.attempts: Counter[int] = Counter()
        self.planned = 0  # tasks taken from the plan so far
        self.exhausted = False
        self.giving_up: tuple[int, str] | None = None

    def next(self, next_out: int) -> Task | None:
        """The task to run now, or None; ``next_out`` is the next task the output waits for."""
        if self.retry:
            return self.retry.pop(0)
        if self.exhausted or self.giving_up is not None or self.planned - next_out >= self.backlog:
            return None
        task = next(self.plan, None)
        if task is NOT_READY:  # a stream's next block is not read yet
            return None
        if task is None:
            self.exhausted = True
            return None
        self.planned += 1
        return task

    def lost(self, task: Task, fault: bool, where: str | None = None) -> None:
        """``task`` must run again; ``fault``: it was running when its worker died, doing ``where`` (if known)."""
        if fault:
            self.attempts[task.index] += 1
            if self.attempts[task.index] >= self.max_attempts:
                msg = f"{task.describe()} killed its worker {self.max_attempts} times; giving up"
                if where is not None:
                    msg = (
                        f"{where} killed its worker {self.max_attempts} times ({task.describe()}); giving up: "
                        "what is in the output is complete"
                    )
                if self.giving_up is None or task.index < self.giving_up[0]:
                    self.giving_up = (task.index, msg)
        self.retry.append(task)
        self.retry.sort(key=lambda t: t.index)
        if self.giving_up is not None:
            self.retry = [t for t in self.retry if t.index < self.giving_up[0]]

    def held_back(self, next_out: int) -> bool:
        """Tasks are held back because the output is behind (``backlog`` planned and not in it yet)."""
        return not self.exhausted and self.giving_up is None and self.planned - next_out >= self.backlog

    def done(self, next_out: int) -> bool:
        """Every task is planned and in the output. Raises GiveUp when the run must give up now."""
        if self.giving_up is not None and next_out >= self.giving_up[0]:
            raise GiveUp(self.giving_up[1])
        return self.exhausted and not self.retry and next_out == self.planned
