"""A local worker process: takes tasks over its pipe, flushes counts to its in-flight rows."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections import deque
from multiprocessing.reduction import recv_handle
from typing import TYPE_CHECKING, Any

from mpobs.executors.local.messages import Done, Fatal, Place, Reopen, RunTask, Stop, ToWorker, Written
from mpobs.executors.parts import part_path
from mpobs.executors.task import TaskSettings, run_task
from mpobs.lifeline import die_with_parent
from mpobs.metrics.activity import OutputWait
from mpobs.metrics.layout import DOING_FIELDS, Layout
from mpobs.metrics.segment import StatsSegment
from mpobs.pipeline.dag import Pipeline
from mpobs.tracing.records import QueueEvents

if TYPE_CHECKING:
    from mpobs.inputs.base import Task


class RowSink:
    """Counts of the running task go to the worker's in-flight row, once per batch."""

    def __init__(self, seg: StatsSegment, row: int, slot: int) -> None:
        self.seg, self.row, self.slot = seg, row, slot

    def flush(
        self, delta: list[int], traces_sent: int, traces_dropped: int, errors_sent: int, errors_dropped: int
    ) -> None:
        if traces_sent or traces_dropped or errors_sent or errors_dropped:
            self.seg.flush(
                self.row,
                delta,
                self.slot,
                traces_sent=traces_sent,
                traces_dropped=traces_dropped,
                errors_sent=errors_sent,
                errors_dropped=errors_dropped,
            )
        else:
            self.seg.flush(self.row, delta)


class WorkerArgs:
    """Everything a worker process is started with (fork: nothing is pickled).

    ``conn``: its end of the pipe to the pool; ``lock``: the segment's lock; ``events_q``:
    its record queue, a SimpleQueue when ``wait_traces`` (wait for room, never drop:
    --save-traces); ``stop_event``: set, every worker stops at its next batch; ``store``:
    the pool's BlockStore (a shared mapping, inherited), when the input has blocks.
    """

    __slots__ = (
        "conn",
        "events_q",
        "layout",
        "lock",
        "out_fd",
        "parent_pid",
        "part_dir",
        "pipeline",
        "seg_name",
        "settings",
        "slot",
        "stop_event",
        "store",
        "wait_traces",
    )

    def __init__(
        self,
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
        store: Any = None,
    ) -> None:
        self.slot, self.conn, self.seg_name, self.layout, self.lock = slot, conn, seg_name, layout, lock
        self.pipeline, self.settings, self.events_q, self.wait_traces = pipeline, settings, events_q, wait_traces
        self.stop_event, self.parent_pid, self.part_dir = stop_event, parent_pid, part_dir
        self.out_fd, self.store = out_fd, store


def worker_main(args: WorkerArgs) -> None:
    """Run tasks until told to stop (``Stop``), the pipe closes, or the parent dies.

    The messages are in mpobs.executors.local.messages. With ``out_fd`` each task's output
    is written into it where the pool places it (``DirectOutput``); with ``out_fd`` None it
    goes to a part file in ``part_dir`` instead, which the ordered output joins (mpobs.run.ordered_output).
    """
    die_with_parent(args.parent_pid)
    # Ctrl-C (and a SIGTERM sent to the process group) reach every process; the
    # coordinator decides what stops, and stops workers itself (stop event, SIGKILL).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the coordinator reopens the output, and tells us
    seg = StatsSegment.attach(args.seg_name, args.layout, args.lock)
    worker = _Worker(args, seg)
    try:
        seg.set_worker(args.slot, pid=os.getpid(), alive=1)
        worker.serve()
    except OutputWriteError as err:
        try:
            args.conn.send(Fatal(str(err), True))
        except OSError:
            pass
    except Exception:
        import traceback  # here: the module and textwrap cost every run's start-up 2 ms

        try:
            args.conn.send(Fatal(traceback.format_exc(), False))
        except OSError:
            pass
    finally:
        args.pipeline.watch([0] * len(DOING_FIELDS))  # its view of the segment goes first, so that it can close
        seg.close()
        args.conn.close()


class _Worker:
    def __init__(self, args: WorkerArgs, seg: StatsSegment) -> None:
        self.args, self.seg, self.conn = args, seg, args.conn
        args.settings.worker = str(args.slot)
        self.events = QueueEvents(args.events_q, args.wait_traces) if args.events_q is not None else None
        self.direct = DirectOutput(args.out_fd, args.conn) if args.out_fd is not None else None
        self.early: deque[ToWorker] = deque()  # messages read while serving grants between batches
        args.pipeline.watch(seg.doing(args.slot))  # what it runs, for the coordinator to name its stalls and deaths

    def serve(self) -> None:
        while True:
            try:
                msg = self.early.popleft() if self.early else self._wait()
            except (EOFError, OSError):
                return
            match msg:
                case RunTask(task=task, seq=seq):
                    if not self._run(task, seq):
                        return  # stopped (--max-errors, or the parent died)
                case Place(index=index, offset=offset):
                    self._direct().grant(index, offset)
                case Reopen():
                    self._direct().reopen()
                case Stop():
                    return
                case _:
                    raise TypeError(f"worker {self.args.slot}: unexpected message {msg!r}")

    def _direct(self) -> DirectOutput:
        """Our share of the output file: the pool places tasks and reopens the output only when we write into it."""
        if self.direct is None:
            raise TypeError(f"worker {self.args.slot}: told to write the output, but it has no output file")
        return self.direct

    def _wait(self) -> ToWorker:
        """The next message; the time waited counts as waiting for work, but the part of it while the
        run was held by its output (``OutputWait``) as waiting for the output."""
        t0 = time.perf_counter_ns()
        held0 = OutputWait.held_ns(self.seg, t0)
        msg = self.conn.recv()
        t1 = time.perf_counter_ns()
        held = min(max(0, OutputWait.held_ns(self.seg, t1) - held0), t1 - t0)
        self.seg.add_worker(self.args.slot, waiting_ns=t1 - t0 - held, output_wait_ns=held)
        return msg

    def _run(self, task: Task, seq: int) -> bool:
        t0 = time.perf_counter_ns()
        try:
            return self._run_task(task, seq)
        finally:
            self.seg.add_worker(self.args.slot, busy_ns=time.perf_counter_ns() - t0)

    def _run_task(self, task: Task, seq: int) -> bool:
        a = self.args
        sink = RowSink(self.seg, a.layout.inflight_row(a.slot, seq), a.slot)
        run = functools.partial(
            run_task,
            task,
            a.pipeline,
            a.layout,
            a.settings,
            counts=sink,
            events=self.events,
            should_stop=self._should_stop,
            store=a.store,
        )
        if self.direct is None:
            with open(part_path(a.part_dir, task.index), "wb") as part:
                result = run(part.write)
            if result is not None:
                self.conn.send(Done(seq, result))
            return result is not None
        self.direct.start(task.index)
        result = run(self.direct.write)
        if result is None:
            return False
        written = self.direct.finish(task.index)
        self.conn.send(Done(seq, result))
        if written:
            self.conn.send(Written(task.index))
        return True

    def _serve_grants(self, direct: DirectOutput) -> None:
        """Between batches: take the grants (placements) now; keep other messages for later."""
        while self.conn.poll():
            msg = self.conn.recv()
            if isinstance(msg, Place):
                direct.grant(msg.index, msg.offset)
            elif isinstance(msg, Reopen):
                direct.reopen()  # its descriptor follows at once on the pipe
            else:
                self.early.append(msg)

    def _should_stop(self) -> bool:
        a = self.args
        if self.direct is not None:
            # The output is written in task order: a grant left waiting here would hold
            # up every task after it.
            self._serve_grants(self.direct)
        if a.settings.max_errors is not None and self.seg.live_errors() >= a.settings.max_errors:
            a.stop_event.set()  # every worker stops at its next batch; the coordinator reports it
        return a.stop_event.is_set() or os.getppid() != a.parent_pid


class DirectOutput:
    """A worker writing its share of the output file itself (see mpobs.run.ordered_output and LocalPool.place).

    Once every task before one is written, the ordered output places (grants) that task at the
    offset where its output starts. A task with its grant writes each batch as it
    comes (still in cache); one without keeps its output until the grant arrives,
    between two batches or after it ended. Its bytes are in the file when it says
    ``Written(index)`` (mpobs.executors.local.messages).
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

    def reopen(self) -> None:
        """The output is another file now (SIGHUP): take it over our descriptor's number.

        It comes when nothing is placed: every grant before it was for the old file and is written.
        """
        new = recv_handle(self.conn)
        try:
            os.dup2(new, self.fd)
        finally:
            os.close(new)

    def grant(self, index: int, offset: int) -> None:
        if index in self.held:
            pwrite_all(self.fd, self.held.pop(index), offset)
            self.conn.send(Written(index))
        elif index == self.running:
            self.next_at[index] = offset + sum(map(len, self.chunks))
            pwrite_all(self.fd, self.chunks, offset)
            self.chunks = []
        else:
            self.next_at[index] = offset  # a task it holds but has not started


class OutputWriteError(Exception):
    """The output file cannot be written (a full disk, say)."""


def pwrite_all(fd: int, chunks: list[bytes], offset: int) -> None:
    """Write ``chunks`` one after another at ``offset``: a few system calls, no joined copy."""
    i = 0
    while i < len(chunks):
        group = chunks[i : i + 512]  # under IOV_MAX (1024 on Linux)
        try:
            n = os.pwritev(fd, group, offset)
        except OSError as err:
            raise OutputWriteError(err.strerror or str(err)) from err
        offset += n
        for c in group:  # a short write: go on from where it stopped
            if n >= len(c):
                n -= len(c)
                i += 1
            else:
                chunks[i] = c[n:]
                break
