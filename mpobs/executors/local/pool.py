"""The local executor: one worker process per slot, a pipe each, restarted when one dies."""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import wait as mp_wait
from multiprocessing.reduction import send_handle
from typing import Any

from mpobs.defaults import PREFETCH, STOP_CALL_GRACE, WORKER_QUEUE_MESSAGES
from mpobs.executors.base import (
    Event,
    Executor,
    LimitReached,
    RunContext,
    TaskDone,
    TaskLost,
    TaskWritten,
    WorkerFailed,
)
from mpobs.executors.local.messages import Done, Fatal, Place, Reopen, RunTask, Stop, Written
from mpobs.executors.local.worker import WorkerArgs, worker_main
from mpobs.executors.parts import make_part_dir, part_path
from mpobs.inputs.base import Task, TimedOutCall
from mpobs.inputs.blockstore import BlockStore
from mpobs.metrics.activity import describe, where
from mpobs.metrics.layout import DOING_FIELDS
from mpobs.tracing.records import QueueReader

#: Part folders (stdout output) are named <prefix><coordinator pid>-<random> in the temp folder.
_NOT_DOING = memoryview(bytes(8 * len(DOING_FIELDS))).cast("q")


class _StoppedCall:
    """A worker killed because its call ran past --call-timeout: the call, and its row of what it was doing then."""

    __slots__ = ("call", "doing")

    def __init__(self, call: TimedOutCall, doing: dict[str, int]) -> None:
        self.call, self.doing = call, doing


class _Slot:
    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.inflight: deque[tuple[Task, int]] = deque()  # handed out, not finished: the running one first
        self.held: dict[int, Task] = {}  # finished, output not yet written (direct output only)
        self.seq = 0
        self.alive = True


class LocalPool(Executor):
    """Worker processes on this machine; each counts into its own in-flight rows of the segment.

    Each worker gets up to PREFETCH tasks ahead, over its pipe (the messages:
    mpobs.executors.local.messages), and reads their bytes itself. Its trace and
    error records go on a queue of its own, read here by a thread each into the
    run's collector. With our own output file, workers write their output into it
    themselves where they are placed (``place``); otherwise each task's output is a
    part file in a temp folder of the pool's.
    """

    name = "local"
    writes_output = True

    def __init__(self, workers: int, ctx: Any = None) -> None:
        self.n = max(1, workers)
        self.mp = ctx or multiprocessing.get_context("fork")
        self.slots: list[_Slot] = []
        self.readers: list[QueueReader] = []
        self.restarted = 0
        self.stopping = False
        self.limit_seen = False
        self.part_dir = ""
        self._messages_seen = 0

    @property
    def capacity(self) -> int:
        return self.n

    def start(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._names = [
            (n.id, getattr(n.proc, "ref", None)) for n in ctx.pipeline.nodes
        ]  # for mpobs.metrics.activity.where
        self._timed_out: dict[int, _StoppedCall] = {}  # by slot, until its death is handled
        self.seg = ctx.segment
        self.out_fd = ctx.out_fd
        self.stop_event = self.mp.Event()
        if self.out_fd is None:
            self.part_dir = make_part_dir()
        # Move everything alive now out of the collector's reach: a collection in a fresh
        # worker would otherwise write to (and so copy) every page of objects it inherited.
        gc.freeze()
        self.slots = [self._spawn(s) for s in range(self.n)]
        # After the first forks, so those happen from a single thread (a worker started
        # again after a crash is forked while the readers run; it uses none of their locks).
        self._start_readers()

    def _spawn(self, slot: int) -> _Slot:
        parent_conn, child_conn = self.mp.Pipe()
        # Its own queue: a worker killed mid-write harms no other (see events.QueueEvents).
        wait = self.ctx.wait_traces
        events_q = self.mp.SimpleQueue() if wait else self.mp.Queue(WORKER_QUEUE_MESSAGES)
        self.readers.append(QueueReader(events_q, self.ctx.collector, name=f"mpobs-records-{len(self.readers)}"))
        seg, ctx = self.seg, self.ctx
        args = WorkerArgs(
            slot,
            child_conn,
            seg.name,
            seg.layout,
            seg.lock,
            ctx.pipeline,
            ctx.settings,
            events_q,
            wait,
            self.stop_event,
            os.getpid(),
            self.part_dir,
            self.out_fd,
            ctx.store,
        )
        proc = self.mp.Process(target=worker_main, name=f"mpobs-worker-{slot}", args=(args,), daemon=True)
        proc.start()
        child_conn.close()
        return _Slot(proc, parent_conn)

    def _start_readers(self) -> None:
        for reader in self.readers:
            if reader.thread.ident is None:
                reader.start()

    # -- running tasks -------------------------------------------------------------
    def room(self) -> int:
        return sum(PREFETCH - len(s.inflight) for s in self.slots if s.alive)

    def submit(self, task: Task) -> None:
        """To the live worker with the fewest tasks (all have room: see ``room``)."""
        s = min((s for s in self.slots if s.alive), key=lambda s: len(s.inflight))
        seq = s.seq
        s.seq += 1
        s.inflight.append((task, seq))
        try:
            s.conn.send(RunTask(task, seq))
        except OSError:
            pass  # it died; poll() reports the lost task

    def place(self, index: int, offset: int) -> bool:
        """Tell the worker with task ``index`` (to run, running, or finished) that its output starts at ``offset``."""
        for s in self.slots:
            if s.alive and (index in s.held or any(t.index == index for t, _ in s.inflight)):
                try:
                    s.conn.send(Place(index, offset))
                except OSError:
                    pass  # it died; poll() reports the task as lost
                return True
        return False

    def reopen_output(self, fd: int) -> None:
        """Hand each worker the new output file (the same descriptor number here; a worker forked later inherits it)."""
        for s in self.slots:
            if s.alive:
                try:
                    s.conn.send(Reopen())
                    send_handle(s.conn, fd, s.proc.pid)
                except OSError:
                    pass  # it died; poll() reports its tasks as lost

    def block_store(self, slots: int, slot_bytes: int) -> BlockStore:
        """One anonymous shared mapping, made before the workers fork: they read blocks where they lie."""
        return BlockStore.shared_store(slots, slot_bytes)

    def poll(self, timeout: float, wake: Sequence[int] = ()) -> list[Event]:
        """Wait for messages or deaths (or ``wake``); return what the workers did."""
        live = [s for s in self.slots if s.alive]
        ready = set(mp_wait([s.conn for s in live] + [s.proc.sentinel for s in live] + list(wake), timeout))
        events: list[Event] = []
        # First free the lock from any worker that died holding it: reading the
        # messages below takes the lock.
        died = {s.proc.pid for s in live if s.proc.sentinel in ready}
        if died:
            self.seg.release_for(died)
        for i, s in enumerate(self.slots):
            if not s.alive:
                continue
            if s.conn in ready or s.proc.sentinel in ready:
                events += self._read(i, s)  # what it said before dying still counts
            if s.proc.sentinel in ready:
                events += self._died(i, s)
        self._start_readers()  # for workers started again after a crash
        if self.ctx.call_timeout is not None:
            self._stop_timed_out_calls(self.ctx.call_timeout)
        return events

    def _kill_busy_workers(self) -> None:
        """A stopping run: SIGKILL the workers still inside a processor's call (a hanging function, say),
        which would not see the stop before it returns. Their tasks are unfinished: nothing of them counts."""
        for i, s in enumerate(self.slots):
            if s.proc.is_alive() and self.seg.doing_now(i)["doing_proc"]:
                try:
                    os.kill(s.proc.pid, signal.SIGKILL)
                except OSError:
                    pass  # it ended by itself

    def _stop_timed_out_calls(self, timeout: float) -> None:
        """SIGKILL a worker whose python processor's call runs longer than ``timeout``.

        ``_died`` says what timed out.
        """
        now = time.perf_counter_ns()
        timed = self.seg.layout.timed
        for i, s in enumerate(self.slots):
            if not s.alive or not s.inflight or i in self._timed_out:
                continue
            d = self.seg.doing_now(i)
            p = d["doing_proc"] - 1
            if p in timed and now - d["doing_since_ns"] > timeout * 1e9:
                task = s.inflight[0][0]
                first = d["doing_line"] + task.first_line - task.file_line  # run-wide
                self._timed_out[i] = _StoppedCall(TimedOutCall(p, first, d["doing_lines"], timeout), d)
                try:
                    os.kill(s.proc.pid, signal.SIGKILL)
                except OSError:
                    pass  # it ended by itself: its death is handled as it is

    def _read(self, i: int, s: _Slot) -> list[Event]:
        events: list[Event] = []
        try:
            while s.conn.poll():
                match s.conn.recv():
                    case Done(seq=seq, result=result):
                        task, expected = s.inflight.popleft()
                        assert seq == expected, (seq, expected)
                        # Out of its in-flight row now, before a death handled below zeroes the row.
                        self.seg.complete(result.counts, live_row=self.seg.layout.inflight_row(i, seq))
                        result.pending = True
                        if self.out_fd is None:
                            result.output = part_path(self.part_dir, task.index)
                        else:
                            s.held[task.index] = task
                        self.seg.add_worker(i, tasks=1, lines=result.lines, bytes=task.input_bytes)
                        events.append(TaskDone(task, result))
                    case Written(index=index):
                        del s.held[index]
                        events.append(TaskWritten(index))  # its output is now in the file
                    case Fatal(detail=detail, io=io):
                        events.append(WorkerFailed(str(i), detail if io else detail.strip().splitlines()[-1], io))
        except (EOFError, OSError):
            pass
        return events

    def _died(self, i: int, s: _Slot) -> list[Event]:
        s.proc.join()
        s.alive = False
        stopped = self._timed_out.pop(i, None)
        doing = where(
            stopped.doing if stopped is not None else self.seg.doing_now(i),
            self._names,
            [name for name, _ in self.ctx.settings.inputs],
        )
        named = describe(doing) if doing is not None and s.inflight else None
        self.seg.doing(i)[:] = _NOT_DOING  # its successor starts with nothing in hand
        reason = f"worker {i} died (exit code {s.proc.exitcode})" + (f" in {named}" if named else "")
        # The first task is the one it was running; the rest only waited.
        lost = [
            TaskLost(t, reason, fault=k == 0, where=named if k == 0 else None) for k, (t, _) in enumerate(s.inflight)
        ]
        if stopped is not None and lost:  # not a crash: its call timed out, and is an error of its line now
            task = lost[0].task
            lost[0] = TaskLost(
                task._replace(timed_out=(*task.timed_out, stopped.call)),
                f"{named}: timed out after {stopped.call.seconds:g} s; its worker was replaced",
            )
        lost += [TaskLost(t, reason, finished=True) for t in sorted(s.held.values(), key=lambda t: t.index)]
        events: list[Event] = list(lost)
        s.inflight.clear()
        s.held.clear()
        s.conn.close()
        self.seg.release_for({s.proc.pid})
        self.seg.drop(i)
        self.seg.set_worker(i, alive=0)
        if self.stop_event.is_set():
            self.stopping = True  # workers stop by themselves (--max-errors): not a crash
            if not self.limit_seen:
                self.limit_seen = True
                events.append(LimitReached())
        if not self.stopping:
            self.slots[i] = self._spawn(i)
            self.restarted += 1
            self.seg.set_system(workers_restarted=self.restarted)
        return events

    def stop_restarts(self) -> None:
        self.stopping = True

    def any_alive(self) -> bool:
        return any(s.alive and s.proc.is_alive() for s in self.slots)

    def dead_pids(self) -> set[int]:
        """Workers that have exited but whose death is not handled yet."""
        return {s.proc.pid for s in self.slots if s.alive and not s.proc.is_alive()}

    # -- stopping ------------------------------------------------------------------
    def shutdown(self, graceful: bool, timeout: float = 5.0) -> None:
        """Stop every worker: after its tasks (graceful) or at the next batch; kill what lingers.

        A worker that exits first flushes the records its queue thread still holds
        (at --trace-sample 1 that can be many MB), so it is given time for as long
        as records keep arriving: killing it mid-write would cut a message in two.
        Then the record queues are read to their end.
        """
        self.stopping = True
        try:
            self._stop_workers(graceful, timeout)
        finally:
            self._start_readers()
            for reader in self.readers:  # the workers are gone: read what is left, then stop
                reader.finish()
            if self.part_dir:
                shutil.rmtree(self.part_dir, ignore_errors=True)

    def _stop_workers(self, graceful: bool, timeout: float) -> None:
        if not self.slots:
            return
        if not graceful:
            self.stop_event.set()
        for s in self.slots:
            if s.alive:
                try:
                    s.conn.send(Stop())
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        calls_end = None if graceful else time.monotonic() + STOP_CALL_GRACE
        while time.monotonic() < deadline:
            # One look at who is alive: a worker that exits between two looks left an
            # empty list to wait on, and the wait slept its whole 50 ms (half the small runs).
            alive = [s.proc for s in self.slots if s.proc.is_alive()]
            if not alive:
                break
            if calls_end is not None and time.monotonic() >= calls_end:
                self._kill_busy_workers()
                calls_end = None
            if self._records_arrived():  # records still arriving: wait as long as they do
                deadline = max(deadline, time.monotonic() + timeout)
            ready = mp_wait([p.sentinel for p in alive], 0.05)
            for p in alive:
                if p.sentinel in ready:
                    # Its descriptors are closed: it is exiting, and its records are all sent.
                    # Its memory is still being freed (a few ms): wait for that here rather
                    # than look again and again (the looks took a core from the exiting workers).
                    p.join(max(0.0, deadline - time.monotonic()))
        for s in self.slots:
            if s.proc.is_alive():
                s.proc.kill()
            s.proc.join(timeout=2)
            s.alive = False
            s.conn.close()
        self.seg.release_for({s.proc.pid for s in self.slots})
        for i in range(len(self.slots)):
            self.seg.drop(i)
            self.seg.set_worker(i, alive=0)
        for s in self.slots:
            if s.proc.exitcode is not None:
                s.proc.close()  # its sentinel fd now, not at garbage collection

    def _records_arrived(self) -> int:
        now = self.ctx.collector.messages
        new, self._messages_seen = now - self._messages_seen, now
        return new
