"""The scheduler on its own: what runs next, the backlog bound, lost tasks taken back, giving up."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mpobs.inputs.base import NOT_READY, Task
from mpobs.run.scheduler import GiveUp, Scheduler


def tasks(n: int, lines: int = 10) -> list[Task]:
    """``n`` tasks of ``lines`` lines each, as a file's plan makes them."""
    return [Task(i, i * 100, (i + 1) * 100, 1 + i * lines, lines, path="in.log") for i in range(n)]


def indexes(sched: Scheduler, next_out: int, most: int = 100) -> list[int]:
    """What the scheduler hands out now, in order, until it says None."""
    got = []
    while len(got) < most and (task := sched.next(next_out)) is not None:
        got.append(task.index)
    return got


def test_the_plan_is_handed_out_in_order_then_it_is_exhausted() -> None:
    sched = Scheduler(iter(tasks(4)), backlog=10)
    assert not sched.exhausted
    assert indexes(sched, 0) == [0, 1, 2, 3]
    assert sched.exhausted and sched.planned == 4
    assert sched.next(0) is None  # exhausted stays exhausted
    assert not sched.done(3)  # task 3 is not in the output yet
    assert sched.done(4)


def test_no_more_than_backlog_tasks_are_ahead_of_the_output() -> None:
    sched = Scheduler(iter(tasks(20)), backlog=3)
    assert indexes(sched, 0) == [0, 1, 2]
    assert sched.held_back(0)  # the output waits for task 0: nothing more starts
    assert indexes(sched, 0) == []
    assert indexes(sched, 1) == [3]  # one in the output, one more
    assert indexes(sched, 4) == [4, 5, 6]
    assert not sched.held_back(7)
    assert sched.planned == 7


def test_a_plan_that_is_not_ready_is_asked_again_later() -> None:
    items: list[Any] = [tasks(2)[0], NOT_READY, NOT_READY, tasks(2)[1]]
    sched = Scheduler(iter(items), backlog=10)
    assert indexes(sched, 0) == [0]  # then the stream's next block is not read yet
    assert not sched.exhausted and sched.planned == 1
    assert indexes(sched, 0) == []  # still not ready
    assert indexes(sched, 0) == [1]
    assert indexes(sched, 0) == [] and sched.exhausted


def test_lost_tasks_run_again_first_lowest_index_first() -> None:
    plan = tasks(6)
    sched = Scheduler(iter(plan), backlog=10)
    assert indexes(sched, 0, most=4) == [0, 1, 2, 3]
    sched.lost(plan[3], fault=False)
    sched.lost(plan[1], fault=True)
    # Before anything new from the plan: the output may be waiting for one of them.
    assert indexes(sched, 0, most=3) == [1, 3, 4]
    assert sched.planned == 5  # a task run again is not planned twice


def test_lost_tasks_run_again_even_when_the_backlog_is_full() -> None:
    plan = tasks(5)
    sched = Scheduler(iter(plan), backlog=2)
    assert indexes(sched, 0) == [0, 1]
    sched.lost(plan[0], fault=True)
    assert sched.held_back(0)
    assert indexes(sched, 0) == [0]  # the task the output waits for is never held back


def crash(sched: Scheduler, task: Task, times: int, where: str | None = None) -> None:
    """``task`` kills its worker ``times`` times, each time taken back and handed out again while it may."""
    for _ in range(times):
        sched.lost(task, fault=True, where=where)
        if sched.retry and sched.retry[0].index == task.index:
            assert sched.next(0) is task


def test_only_faults_count_towards_giving_up() -> None:
    plan = tasks(3)
    sched = Scheduler(iter(plan), backlog=10, max_attempts=3)
    indexes(sched, 0)
    for _ in range(10):  # lost while it only waited on a worker that died: not its fault
        sched.lost(plan[1], fault=False)
        assert indexes(sched, 0) == [1]
    crash(sched, plan[1], 2)
    assert sched.giving_up is None and sched.attempts[1] == 2
    sched.lost(plan[1], fault=True)
    assert sched.giving_up is not None and sched.giving_up[0] == 1


def test_a_task_lost_max_attempts_times_gives_up_once_the_tasks_before_it_are_in() -> None:
    plan = tasks(8)
    sched = Scheduler(iter(plan), backlog=10, max_attempts=3)
    assert indexes(sched, 0, most=6) == [0, 1, 2, 3, 4, 5]
    crash(sched, plan[3], 2)
    sched.lost(plan[5], fault=False)  # after the bad task: not run again once the run gives up
    sched.lost(plan[1], fault=False)  # before it: still run again, its output is wanted
    sched.lost(plan[3], fault=True)  # the third time
    assert sched.giving_up is not None and sched.giving_up[0] == 3
    assert indexes(sched, 0) == [1]  # nothing after task 3, nothing new from the plan
    assert not sched.held_back(0)  # not held back by the output: given up
    assert sched.done(2) is False  # tasks 0-2 are not all in the output yet
    with pytest.raises(GiveUp) as err:
        sched.done(3)
    assert str(err.value) == f"{plan[3].describe()} killed its worker 3 times; giving up"


def test_giving_up_names_where_it_died_and_keeps_the_earliest_task() -> None:
    plan = tasks(6)
    sched = Scheduler(iter(plan), backlog=10, max_attempts=2)
    indexes(sched, 0)
    crash(sched, plan[4], 2)
    assert sched.giving_up is not None and sched.giving_up[0] == 4
    sched.lost(plan[5], fault=False)
    crash(sched, plan[2], 2, where="processor 'p' (function m:f) at line in.log:25")
    sched.lost(plan[1], fault=True)  # once only: not given up on, it runs again
    assert sched.giving_up is not None and sched.giving_up[0] == 2  # the earlier task wins
    crash(sched, plan[3], 2)  # later than task 2: changes nothing
    assert sched.giving_up[0] == 2
    assert [t.index for t in sched.retry] == [1]  # task 5's run again is dropped: it is after task 2
    with pytest.raises(GiveUp, match=r"^processor 'p' \(function m:f\) at line in\.log:25 killed its worker 2 times"):
        sched.done(2)
    assert "what is in the output is complete" in sched.giving_up[1]
    assert plan[2].describe() in sched.giving_up[1]


def test_done_waits_for_lost_tasks_and_for_the_output() -> None:
    plan = tasks(2)
    sched = Scheduler(iter(plan), backlog=10)
    assert indexes(sched, 0) == [0, 1]
    sched.lost(plan[1], fault=True)
    assert not sched.done(2)  # task 1 must run again, whatever the output says
    assert indexes(sched, 1) == [1]
    assert not sched.done(1) and sched.done(2)


def test_an_empty_plan_is_done_at_once() -> None:
    def nothing() -> Iterator[Task]:
        yield from ()

    sched = Scheduler(nothing(), backlog=4)
    assert sched.next(0) is None
    assert sched.exhausted and sched.done(0)
    assert not sched.held_back(0)
