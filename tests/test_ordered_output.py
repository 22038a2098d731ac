"""The ordered output on its own: finished tasks go into the output in task order, and count only then."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mpobs.executors.base import Executor, RunContext
from mpobs.executors.task import TaskResult
from mpobs.inputs.base import Task
from mpobs.output.joiner import OutputJoiner
from mpobs.run.ordered_output import OrderedOutput


class PlacingExecutor(Executor):
    """An executor that writes tasks' output itself (as the local pool does), where it is placed.

    ``finished`` holds the output of tasks it ran; ``place`` takes the offset; the test says
    when the bytes get written (``write``), as a worker would some time later.
    """

    writes_output = True
    name = "placing"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.finished: dict[int, bytes] = {}
        self.placed: dict[int, int] = {}
        self.reopened: list[int] = []

    @property
    def capacity(self) -> int:
        return 1

    def start(self, ctx: RunContext) -> None: ...

    def room(self) -> int:
        return 1

    def submit(self, task: Task) -> None: ...

    def poll(self, timeout: float, wake: Any = ()) -> list[Any]:
        return []

    def shutdown(self, graceful: bool) -> None: ...

    def place(self, index: int, offset: int) -> bool:
        if index not in self.finished:
            return False
        self.placed[index] = offset
        return True

    def write(self, index: int) -> None:
        os.pwrite(self.fd, self.finished.pop(index), self.placed.pop(index))

    def reopen_output(self, fd: int) -> None:
        self.reopened.append(fd)


class CarryingExecutor(PlacingExecutor):
    """Results carry their output as bytes; nothing is placed."""

    writes_output = False
    name = "carrying"


def task(i: int) -> Task:
    return Task(i, i * 10, (i + 1) * 10, 1 + i, 1, path="in.log")


def result(i: int, output: bytes | str | None, out_bytes: int = 0) -> TaskResult:
    r = TaskResult(i, 1, 1, [i + 1], out_bytes=len(output) if isinstance(output, bytes) else out_bytes)
    r.output = output
    return r


class Run:
    """An OrderedOutput over a real output file, recording what it commits, in order."""

    def __init__(self, path: Path, executor_cls: type[PlacingExecutor] = CarryingExecutor) -> None:
        self.path = path
        self.sink = OutputJoiner(str(path))
        self.executor = executor_cls(self.sink.fd)
        self.committed: list[int] = []
        self.reopens: list[str] = []
        self.out = OrderedOutput(
            self.sink,
            self.executor,
            lambda t, r: self.committed.append(t.index),
            lambda sink, what: self.reopens.append(what),
        )

    def finish(self, i: int, output: bytes | str | None) -> None:
        """Task ``i`` is done; its result carries ``output``."""
        self.out.done(task(i), result(i, output))

    def finish_held(self, i: int, data: bytes) -> None:
        """Task ``i`` is done; the executor holds its output ``data``, to write where it is placed."""
        self.executor.finished[i] = data
        self.out.done(task(i), result(i, None, len(data)))

    def close(self) -> bytes:
        assert self.sink.close() is None
        return self.path.read_bytes()


def test_tasks_finished_in_any_order_go_in_in_task_order_and_count_only_then(tmp_path: Path) -> None:
    run = Run(tmp_path / "out")
    run.finish(2, b"two\n")
    run.finish(1, b"one\n")
    run.out.advance()
    assert run.committed == [] and run.out.next == 0  # task 0 holds the others back
    assert run.path.read_bytes() == b""
    run.finish(0, b"zero\n")
    run.out.advance()
    assert run.committed == [0, 1, 2] and run.out.next == 3
    assert run.out.waiting == {}
    run.finish(4, b"four\n")
    run.out.advance()
    assert run.committed == [0, 1, 2]  # 3 is not there yet
    run.finish(3, b"")  # a task whose lines were all dropped
    run.out.advance()
    assert run.committed == [0, 1, 2, 3, 4]
    assert run.sink.bytes_written == len(b"zero\none\ntwo\nfour\n")
    assert run.close() == b"zero\none\ntwo\nfour\n"


def test_a_lost_task_is_forgotten_and_its_finished_result_given_back(tmp_path: Path) -> None:
    run = Run(tmp_path / "out")
    run.finish(1, b"first run of one\n")
    assert run.out.lost(task(1)).output == b"first run of one\n"  # its counts were pending: given back
    assert run.out.lost(task(2)) is None  # not finished: nothing to give back
    run.finish(0, b"zero\n")
    run.out.advance()
    assert run.committed == [0] and run.out.next == 1
    run.finish(1, b"second run\n")
    run.out.advance()
    assert run.committed == [0, 1]
    assert run.close() == b"zero\nsecond run\n"


def test_a_part_file_is_joined_and_removed(tmp_path: Path) -> None:
    part = tmp_path / "part-0"
    part.write_bytes(b"from a part file\n" * 1000)
    run = Run(tmp_path / "out")
    run.finish(0, str(part))
    run.finish(1, b"bytes\n")
    run.out.advance()
    assert run.committed == [0, 1]
    assert not part.exists()
    assert run.close() == b"from a part file\n" * 1000 + b"bytes\n"


def test_a_result_without_output_from_an_executor_that_does_not_write_is_an_internal_error(tmp_path: Path) -> None:
    run = Run(tmp_path / "out")
    run.finish(0, None)
    with pytest.raises(RuntimeError, match="internal error: the carrying executor lost track of task 0"):
        run.out.advance()
    assert run.committed == []
    run.close()


def test_an_executor_that_writes_is_told_where_and_counts_once_it_has_written(tmp_path: Path) -> None:
    run = Run(tmp_path / "out", PlacingExecutor)
    ex = run.executor
    assert run.out.placed_by_executor
    run.out.advance()
    assert ex.placed == {} and not run.out.placing  # task 0 not finished anywhere yet
    run.finish_held(1, b"one one\n")
    run.finish_held(0, b"zero\n")
    run.out.advance()
    assert ex.placed == {0: 0} and run.out.placing  # task 1's offset is not known before 0 is written
    run.out.advance()
    assert ex.placed == {0: 0} and run.committed == []
    ex.write(0)
    run.out.written(0)
    assert run.committed == [0] and run.sink.bytes_written == 5
    run.out.advance()
    assert ex.placed == {1: 5}
    with pytest.raises(AssertionError):
        run.out.written(2)  # only the task being placed can be written
    ex.write(1)
    run.out.written(1)
    assert run.committed == [0, 1] and not run.out.placing
    assert run.close() == b"zero\none one\n"


def test_a_placed_task_lost_before_it_is_written_is_placed_again_at_the_same_offset(tmp_path: Path) -> None:
    run = Run(tmp_path / "out", PlacingExecutor)
    ex = run.executor
    run.finish_held(0, b"zero\n")
    run.out.advance()
    ex.write(0)
    run.out.written(0)
    run.finish_held(1, b"a longer first run of task one\n")
    run.out.advance()
    assert ex.placed == {1: 5}
    ex.write(1)  # its bytes are in the file, but the executor never said so: its worker died
    assert run.out.lost(task(1)) is not None
    assert not run.out.placing and run.committed == [0]
    run.finish_held(1, b"one\n")  # run again, shorter
    run.out.advance()
    assert ex.placed == {1: 5}  # where the committed output ends, as before
    ex.write(1)
    run.out.written(1)
    assert run.committed == [0, 1]
    assert run.close() == b"zero\none\n"  # what the lost run wrote past the end is cut


def test_a_reopen_asked_for_happens_at_the_next_task_boundary(tmp_path: Path) -> None:
    path = tmp_path / "out"
    run = Run(path, PlacingExecutor)
    ex = run.executor
    run.finish_held(0, b"zero\n")
    run.out.advance()
    path.rename(tmp_path / "out.1")  # logrotate's create: ours renamed away, then SIGHUP
    run.out.reopen_asked = True
    run.out.advance()
    assert run.reopens == [] and run.out.reopen_asked  # task 0 is being placed: not a boundary
    ex.write(0)
    run.out.written(0)
    run.finish_held(1, b"one\n")
    run.out.advance()
    assert not run.out.reopen_asked
    assert len(run.reopens) == 1 and "reopened the output" in run.reopens[0]
    assert ex.reopened == [run.sink.fd]  # the executor writes into the new file from now on
    assert ex.placed == {1: 0}  # at the new file's start
    ex.write(1)
    run.out.written(1)
    assert run.committed == [0, 1]
    assert run.close() == b"one\n"
    assert (tmp_path / "out.1").read_bytes() == b"zero\n"


def test_a_reopen_with_nothing_to_reopen_says_nothing(tmp_path: Path) -> None:
    run = Run(tmp_path / "out")
    run.out.reopen_asked = True
    run.finish(0, b"zero\n")
    run.out.advance()
    assert run.reopens == [] and run.committed == [0]
    assert run.close() == b"zero\n"
