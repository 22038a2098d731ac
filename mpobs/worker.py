"""A local worker process: takes tasks over its pipe, flushes counts to its in-flight rows."""

from __future__ import annotations

import os
import signal
import traceback
from collections import deque
from typing import Any

import numpy as np

from mpobs.dag import Pipeline
from mpobs.events import QueueEvents
from mpobs.lifeline import die_with_parent
from mpobs.segment import Layout, StatsSegment
from mpobs.task import TaskSettings, run_task


class RowSink:
    """Counts of the running task go to the worker's in-flight row, once per batch."""

    def __init__(self, seg: StatsSegment, row: int, slot: int) -> None:
        self.seg, self.row, self.slot = seg, row, slot

    def flush(self, delta: np.ndarray, traces_sent: int, traces_dropped: int, errors_sent: int,
              errors_dropped: int) -> None:  # fmt: skip
        self.seg.flush(self.row, delta)
        if traces_sent or traces_dropped or errors_sent or errors_dropped:
            self.seg.add_worker(self.slot, traces_sent=traces_sent, traces_dropped=traces_dropped,
                                errors_sent=errors_sent, errors_dropped=errors_dropped)  # fmt: skip


def worker_main(
    slot: int,
    conn: Any,
    seg_name: str,
    layout: Layout,
    lock: Any,
    pipeline: Pipeline,
    settings: TaskSettings,
    events_q: Any,
    wait_traces: bool,
    stop_event: Any,
    parent_pid: int,
    part_dir: str,
    out_fd: int | None = None,
) -> None:
    """Run tasks until told to stop (None), the pipe closes, or the parent dies.

    Messages: ``("task", task, seq)``; ``("write", index, offset)``: write a finished
    task's output (kept in memory) into ``out_fd`` at ``offset``, answered by
    ``("written", index)``; None: stop. With ``out_fd`` None each task's output goes
    to a part file in ``part_dir`` instead, which the coordinator joins.
    """
    die_with_parent(parent_pid)
    # Ctrl-C (and a SIGTERM sent to the process group) reach every process; the
    # coordinator decides what stops, and stops workers itself (stop event, SIGKILL).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seg = StatsSegment.attach(seg_name, layout, lock)
    settings.worker = str(slot)
    events = QueueEvents(events_q, wait_traces) if events_q is not None else None
    direct = DirectOutput(out_fd, conn) if out_fd is not None else None
    early: deque[Any] = deque()  # messages read while serving grants between batches

    max_errors = settings.max_errors

    def serve_grants() -> None:
        """Between batches: take the coordinator's grants now; keep other messages for later."""
        while conn.poll():
            msg = conn.recv()
            if msg is not None and msg[0] == "write":
                direct.grant(msg[1], msg[2])  # type: ignore[union-attr]
            else:
                early.append(msg)

    def should_stop() -> bool:
        if direct is not None:
            # The output is written in task order: a grant left waiting here would hold
            # up every task after it.
            serve_grants()
        if max_errors is not None and seg.live_errors() >= max_errors:
            stop_event.set()  # every worker stops at its next batch; the coordinator reports it
        return stop_event.is_set() or os.getppid() != parent_pid

    try:
        seg.set_worker(slot, pid=os.getpid(), alive=1)
        while True:
            try:
                msg = early.popleft() if early else conn.recv()
            except (EOFError, OSError):
                break
            if msg is None:
                break
            if msg[0] == "write":
                direct.grant(msg[1], msg[2])  # type: ignore[union-attr]
                continue
            _, task, seq = msg
            sink = RowSink(seg, layout.inflight_row(slot, seq), slot)
            if direct is None:
                with open(os.path.join(part_dir, f"part-{task.index:09d}"), "wb") as part:
                    result = run_task(task, pipeline, layout, settings, part.write, sink, events, should_stop)
                if result is None:
                    break
                conn.send(("done", seq, result))
                continue
            direct.start(task.index)
            result = run_task(task, pipeline, layout, settings, direct.write, sink, events, should_stop)
            if result is None:
                break
            written = direct.finish(task.index)
            conn.send(("done", seq, result))
            if written:
                conn.send(("written", task.index))
    except Exception:
        try:
            conn.send(("fatal", traceback.format_exc()))
        except OSError:
            pass
    finally:
        seg.close()
        conn.close()


class DirectOutput:
    """A worker writing its share of the output file itself (see Coordinator._advance_output).

    Once every task before one is written, the coordinator grants that task the
    offset where its output starts. A task with its grant writes each batch as it
    comes (still in cache); one without keeps its output until the grant arrives,
    between two batches or after it ended. Its bytes are in the file when it says
    ``("written", index)``.
    """

    def __init__(self, fd: int, conn: Any) -> None:
        self.fd, self.conn = fd, conn
        self.next_at: dict[int, int] = {}  # granted, unfinished tasks: where their next bytes go
        self.held: dict[int, list[bytes]] = {}  # finished tasks still waiting for a grant
        self.running = -1
        self.chunks: list[bytes] = []  # the running task's output from before its grant

    def start(self, index: int) -> None:
        self.running, self.chunks = index, []

    def write(self, data: bytes) -> None:
        at = self.next_at.get(self.running)
        if at is None:
            self.chunks.append(data)
        else:
            pwrite_all(self.fd, [data], at)
            self.next_at[self.running] = at + len(data)

    def finish(self, index: int) -> bool:
        """The task ended; True when all its output is in the file."""
        self.running = -1
        if self.next_at.pop(index, None) is not None:
            return True
        self.held[index] = self.chunks
        self.chunks = []
        return False

    def grant(self, index: int, offset: int) -> None:
        if index in self.held:
            pwrite_all(self.fd, self.held.pop(index), offset)
            self.conn.send(("written", index))
        elif index == self.running:
            self.next_at[index] = offset + sum(map(len, self.chunks))
            pwrite_all(self.fd, self.chunks, offset)
            self.chunks = []
        else:
            self.next_at[index] = offset  # a task it holds but has not started


def pwrite_all(fd: int, chunks: list[bytes], offset: int) -> None:
    """Write ``chunks`` one after another at ``offset``: a few system calls, no joined copy."""
    i = 0
    while i < len(chunks):
        group = chunks[i : i + 512]  # under IOV_MAX (1024 on Linux)
        n = os.pwritev(fd, group, offset)
        offset += n
        for c in group:  # a short write: go on from where it stopped
            if n >= len(c):
                n -= len(c)
                i += 1
            else:
                chunks[i] = c[n:]
                break
