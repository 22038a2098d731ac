"""The local executor: one worker process per slot, a pipe each, restarted when one dies."""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from typing import Any, Callable

import numpy as np

from mpobs.dag import Pipeline
from mpobs.events import QUEUE_MESSAGES
from mpobs.segment import StatsSegment
from mpobs.task import Task, TaskResult, TaskSettings
from mpobs.worker import worker_main

#: Tasks handed to a worker ahead, so it never waits for the coordinator.
PREFETCH = 2  # the segment gives each worker two in-flight rows: one per handed-out task


@dataclass
class PoolEvent:
    """Something a worker did: finished a task, died (with the tasks it lost), or failed."""

    kind: str  # "done" | "written" | "died" | "stopped" (--max-errors) | "fatal"
    slot: int
    task: Task | None = None
    vec: np.ndarray | None = None
    result: TaskResult | None = None
    lost: list[Task] = field(default_factory=list)  # died: the tasks it held, the running one first
    held: list[Task] = field(default_factory=list)  # died: finished tasks whose output it still held
    detail: str = ""


class _Slot:
    def __init__(self, proc: Any, conn: Any) -> None:
        self.proc = proc
        self.conn = conn
        self.inflight: deque[tuple[Task, int]] = deque()
        self.held: dict[int, Task] = {}  # finished, output not yet written (direct output only)
        self.seq = 0
        self.alive = True


class LocalPool:
    """Worker processes on this machine; each counts into its own in-flight rows of ``seg``."""

    def __init__(self, ctx: Any, workers: int, seg: StatsSegment, pipeline: Pipeline, settings: TaskSettings,
                 on_queue: Callable[[Any], None], wait_traces: bool, part_dir: str,
                 out_fd: int | None = None) -> None:  # fmt: skip
        self.ctx = ctx
        self.n = workers
        self.seg = seg
        self.pipeline = pipeline
        self.settings = settings
        self.on_queue = on_queue  # told of each worker's new record queue (the coordinator reads it)
        self.wait_traces = wait_traces
        self.part_dir = part_dir
        self.out_fd = out_fd  # workers write the output themselves (see worker_main)
        self.stop_event = ctx.Event()
        self.slots: list[_Slot] = []
        self.restarted = 0
        self.stopping = False

    def start(self) -> None:
        self.slots = [self._spawn(s) for s in range(self.n)]

    def _spawn(self, slot: int) -> _Slot:
        parent_conn, child_conn = self.ctx.Pipe()
        # Its own queue: a worker killed mid-write harms no other (see events.QueueEvents).
        events_q = self.ctx.SimpleQueue() if self.wait_traces else self.ctx.Queue(QUEUE_MESSAGES)
        self.on_queue(events_q)
        proc = self.ctx.Process(
            target=worker_main,
            name=f"mpobs-worker-{slot}",
            args=(slot, child_conn, self.seg.name, self.seg.layout, self.seg.lock, self.pipeline, self.settings,
                  events_q, self.wait_traces, self.stop_event, os.getpid(), self.part_dir, self.out_fd),  # fmt: skip
            daemon=True,
        )
        proc.start()
        child_conn.close()
        return _Slot(proc, parent_conn)

    def fill(self, next_task: Callable[[], Task | None]) -> None:
        """Give every live worker tasks until it holds PREFETCH."""
        for s in self.slots:
            while s.alive and len(s.inflight) < PREFETCH:
                task = next_task()
                if task is None:
                    return
                seq = s.seq
                s.seq += 1
                s.inflight.append((task, seq))
                try:
                    s.conn.send(("task", task, seq))
                except OSError:
                    break  # it died; wait() reports the lost tasks

    def holder(self, index: int) -> int | None:
        """The slot whose worker has task ``index``: to run, running, or finished and not yet written."""
        for i, s in enumerate(self.slots):
            if s.alive and (index in s.held or any(t.index == index for t, _ in s.inflight)):
                return i
        return None

    def grant(self, slot: int, index: int, offset: int) -> None:
        """Tell the worker with task ``index`` that its output starts at ``offset`` (see DirectOutput)."""
        try:
            self.slots[slot].conn.send(("write", index, offset))
        except OSError:
            pass  # it died; wait() reports the task as lost

    def idle(self) -> bool:
        """No task is running or waiting to run (finished outputs may still wait to be written)."""
        return all(not s.inflight for s in self.slots)

    def wait(self, extra: list[Any], timeout: float) -> list[PoolEvent]:
        """Wait for messages, deaths or ``extra`` handles; return what the workers did."""
        handles = [s.conn for s in self.slots if s.alive] + [s.proc.sentinel for s in self.slots if s.alive]
        ready = set(mp_wait(handles + extra, timeout))
        events: list[PoolEvent] = []
        # First free the lock from any worker that died holding it: reading the
        # messages below takes the lock.
        self.unstick({s.proc.pid for s in self.slots if s.alive and s.proc.sentinel in ready})
        for i, s in enumerate(self.slots):
            if not s.alive:
                continue
            if s.conn in ready:
                events += self._read(i, s)
            if s.proc.sentinel in ready:
                events += self._read(i, s)  # what it said before dying still counts
                events.append(self._died(i, s))
        return events

    def _read(self, i: int, s: _Slot) -> list[PoolEvent]:
        events = []
        try:
            while s.conn.poll():
                msg = s.conn.recv()
                if msg[0] == "done":
                    _, seq, result = msg
                    task, expected = s.inflight.popleft()
                    assert seq == expected, (seq, expected)
                    vec = self.seg.complete(self.seg.layout.inflight_row(i, seq), i)
                    if self.out_fd is not None:
                        s.held[task.index] = task
                    events.append(PoolEvent("done", i, task, vec, result))
                elif msg[0] == "written":
                    task = s.held.pop(msg[1])
                    events.append(PoolEvent("written", i, task))  # its output is now in the file
                elif msg[0] == "fatal":
                    events.append(PoolEvent("fatal", i, detail=msg[1].strip().splitlines()[-1]))
        except (EOFError, OSError):
            pass
        return events

    def any_alive(self) -> bool:
        return any(s.alive and s.proc.is_alive() for s in self.slots)

    def dead_pids(self) -> set[int]:
        """Workers that have exited but whose death is not handled yet."""
        return {s.proc.pid for s in self.slots if s.alive and not s.proc.is_alive()}

    def unstick(self, dead: set[int]) -> None:
        if dead:
            self.seg.release_for(dead)

    def _died(self, i: int, s: _Slot) -> PoolEvent:
        s.proc.join()
        s.alive = False
        lost = [t for t, _ in s.inflight]
        held = sorted(s.held.values(), key=lambda t: t.index)
        s.inflight.clear()
        s.held.clear()
        s.conn.close()
        self.seg.release_for({s.proc.pid})
        self.seg.drop(i)
        self.seg.set_worker(i, alive=0)
        ev = PoolEvent("died", i, lost=lost, held=held, detail=f"exit code {s.proc.exitcode}")
        if self.stop_event.is_set():
            self.stopping = True  # workers stop by themselves (--max-errors): not a crash
            ev.kind = "stopped"
        if not self.stopping:
            self.slots[i] = self._spawn(i)
            self.restarted += 1
            self.seg.set_system(workers_restarted=self.restarted)
        return ev

    def shutdown(self, graceful: bool, progress: Callable[[], int], timeout: float = 5.0) -> None:
        """Stop every worker: after its tasks (graceful) or at the next batch; kill what lingers.

        A worker that exits first flushes the records its queue thread still holds
        (at --trace-sample 1 that can be many MB), so it is given time for as long
        as records keep arriving: killing it mid-write would cut a message in two.
        """
        self.stopping = True
        if not graceful:
            self.stop_event.set()
        for s in self.slots:
            if s.alive:
                try:
                    s.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + timeout
        while any(s.proc.is_alive() for s in self.slots) and time.monotonic() < deadline:
            if progress():  # records still arriving: wait as long as they do
                deadline = max(deadline, time.monotonic() + timeout)
            mp_wait([s.proc.sentinel for s in self.slots if s.proc.is_alive()], 0.05)
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
