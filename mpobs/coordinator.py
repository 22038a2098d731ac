"""The coordinator: plans tasks, runs them on an executor, joins output parts, owns the segment."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import stat
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import numpy as np

from mpobs.dag import Pipeline
from mpobs.errors import EXIT_FAILED, EXIT_MAX_ERRORS, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, InputError, MpobsError
from mpobs.events import CHUNK, EventCollector, QueueReader
from mpobs.output import OutputClosed, OutputJoiner
from mpobs.pool import LocalPool, PoolEvent
from mpobs.segment import LOCK_WAIT, SEGMENT_PREFIX, Layout, StatsSegment
from mpobs.stats import RunMeta, build_stats
from mpobs.task import BATCH_LINES, TASK_BYTES, Task, TaskResult, TaskSettings, plan_tasks
from mpobs.tracing import expand as expand_trace

MAX_TASK_ATTEMPTS = 3
#: Tasks started ahead of the output, per worker (see Coordinator._loop).
BACKLOG_PER_WORKER = 6
#: Part folders are named <prefix><coordinator pid>-<random> in the temp folder.
PARTS_PREFIX = "mpobs-parts-"


@dataclass
class RunOptions:
    """Everything ``mpobs process`` can be told."""

    input_path: str
    output_path: str | None = None
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    task_bytes: int = TASK_BYTES
    batch_lines: int = BATCH_LINES
    trace: bool = False
    trace_sample: float = 0.01
    save_traces: str | None = None
    max_errors: int | None = None
    event_chunk: int = CHUNK  # records per queue message
    dashboard: Any = None  # mpobs.dashboard.DashboardOptions
    dashboard_process: Any = None  # mpobs.dashboard.DashboardProcess, forked early (mpobs.dashboard.prestart)
    on_tick: Callable[[Coordinator], None] | None = None  # progress display


@dataclass
class RunOutcome:
    stats: dict[str, Any]
    exit_code: int
    message: str | None
    error_types: dict[tuple[str, str], int]
    recent_errors: list[dict[str, Any]]
    recent_traces: list[dict[str, Any]]


class _Stop(Exception):
    def __init__(self, state: str, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.state, self.code, self.message = state, code, message


def check_paths(input_path: str, output_path: str | None) -> int:
    """Input and output must be usable before any work starts; returns the input's size."""
    try:
        st = os.stat(input_path)
    except FileNotFoundError as err:
        raise InputError(f"input {input_path!r}: no such file") from err
    except OSError as err:
        raise InputError(f"input {input_path!r}: {err.strerror}") from err
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"input {input_path!r} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"input {input_path!r} is not a regular file (streaming input is not supported yet)")
    if not os.access(input_path, os.R_OK):
        raise InputError(f"input {input_path!r}: permission denied")
    try:
        with open(input_path, "rb"):
            pass
    except OSError as err:
        raise InputError(f"input {input_path!r}: {err.strerror}") from err
    if output_path is not None:
        check_writable(output_path, "output", input_path)
    return st.st_size


def check_writable(path: str, what: str, input_path: str | None = None) -> None:
    """``path`` can be created or overwritten, and is not the input (writing it would destroy it)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"{what} {path!r} is a directory")
    if not os.path.isdir(folder):
        raise InputError(f"{what} {path!r}: folder {folder!r} does not exist")
    existed = os.path.exists(path)
    if existed and input_path is not None and os.path.samefile(path, input_path):
        raise InputError(f"{what} {path!r} is the input file; writing it would destroy the input")
    try:
        # os.access says yes to root everywhere; only opening tells (e.g. /proc, a read-only mount).
        with open(path, "ab"):
            pass
    except OSError as err:
        raise InputError(f"{what} {path!r}: cannot write it: {err.strerror}") from err
    if not existed:
        os.unlink(path)


def remove_leftovers() -> None:
    """Remove what runs killed outright (SIGKILL) left: segments and part folders of dead pids.

    Normally the coordinator removes both, and after a lone SIGKILL the resource
    tracker still unlinks the segment; a whole process group killed at once
    leaves them, and the next run clears them.
    """
    import re

    places = [("/dev/shm", re.compile(rf"^{SEGMENT_PREFIX}(\d+)_[0-9a-f]+$")),
              (tempfile.gettempdir(), re.compile(rf"^{PARTS_PREFIX}(\d+)-"))]  # fmt: skip
    for folder, pattern in places:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            m = pattern.match(name)
            if m is None or _pid_alive(int(m[1])):
                continue
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, and not ours to judge
    return True


class Coordinator:
    """Runs one pipeline over one file. ``run`` always cleans up what it made."""

    def __init__(self, pipeline: Pipeline, opts: RunOptions, collector: EventCollector | None = None) -> None:
        self.pipeline = pipeline
        self.opts = opts
        self.ctx = multiprocessing.get_context("fork")
        self.collector = collector or EventCollector()
        ids, name = pipeline.ids, os.path.basename(opts.input_path)
        self.collector.expand = lambda t: expand_trace(t, name, ids)
        self.counters: dict[str, Counter[str]] = {n.id: Counter() for n in pipeline.nodes if n.proc.counts_keys}
        self.error_types: Counter[tuple[str, str]] = Counter()
        self.seg: StatsSegment | None = None
        self.meta: RunMeta | None = None
        self.dashboard: Any = None
        self._signal: int | None = None
        self._last_messages = 0
        self.pool: LocalPool | None = None
        self.readers: list[QueueReader] = []
        self._counters_sent_at = 0.0
        self._stuck_since = self._stuck_last = 0.0
        self.part_dir = ""
        self._done: dict[int, tuple[np.ndarray, TaskResult, int]] = {}  # finished, not yet in the output
        self._next_out = 0  # the next task to go into the output
        self._writing = False  # direct output: _next_out has its grant

    # -- public --------------------------------------------------------------
    def run(self) -> RunOutcome:
        opts = self.opts
        size = check_paths(opts.input_path, opts.output_path)
        if opts.save_traces:
            check_writable(opts.save_traces, "--save-traces file", opts.input_path)
        remove_leftovers()
        workers = max(1, opts.workers)
        self.meta = RunMeta.of(
            self.pipeline, opts.input_path, workers, trace=opts.trace,
            trace_sample=opts.trace_sample if opts.trace else 0.0, output=opts.output_path,
        )  # fmt: skip
        layout = Layout(tuple(self.pipeline.ids), tuple(self.pipeline.tags), workers)
        traces_file: IO[str] | None = None
        pool: LocalPool | None = None
        joiner: OutputJoiner | None = None
        seg: StatsSegment | None = None
        state, code, message = "failed", EXIT_FAILED, None
        old_handlers = self._install_signals()
        dash_proc = opts.dashboard_process
        try:
            if opts.dashboard is not None and dash_proc is None:
                from mpobs.dashboard import DashboardProcess

                # It binds first: a port in use fails the run before any work.
                dash_proc = DashboardProcess(self.ctx, opts.dashboard)
            self.part_dir = tempfile.mkdtemp(prefix=f"{PARTS_PREFIX}{os.getpid()}-")
            self.seg = seg = StatsSegment.create(layout, dash_proc.lock if dash_proc else self.ctx.Lock())
            seg.on_stuck = self._unstick
            seg.set_system(bytes_total=size, workers=workers)
            if opts.save_traces:
                traces_file = open(opts.save_traces, "w", encoding="utf-8")  # noqa: SIM115
                self.collector.traces_file = traces_file
            if dash_proc is not None:
                # Its process was forked before the record queues, so it holds none of their ends.
                self.dashboard = dash_proc.serve_run(self)
                self.collector.forward = self.dashboard.queue
            # Only now, when nothing can fail the start any more: it replaces or empties the file.
            joiner = OutputJoiner(opts.output_path)
            settings = TaskSettings(
                opts.input_path, self.meta.input_name, batch_lines=opts.batch_lines,
                trace_rate=opts.trace_sample if opts.trace else 0.0, event_chunk=opts.event_chunk,
                max_errors=opts.max_errors,
            )  # fmt: skip
            self.pool = pool = LocalPool(
                self.ctx, workers, seg, self.pipeline, settings, self._new_queue,
                wait_traces=bool(opts.save_traces), part_dir=self.part_dir,
                out_fd=joiner.fd if joiner.direct else None,
            )  # fmt: skip
            seg.set_state("running")
            joiner.before_fork()
            pool.start()
            # After the first forks, so those happen from a single thread (a worker started
            # again after a crash is forked while the readers run; it uses none of their locks).
            self._start_readers()
            self._loop(pool, joiner, plan_tasks(opts.input_path, size, opts.task_bytes))
            state, code = "done", EXIT_OK
        except _Stop as stop:
            state, code, message = stop.state, stop.code, stop.message
        except OutputClosed:
            state, code = "interrupted", EXIT_OK
        except MpobsError:
            raise  # a clear message for the user (InputError is an OSError too)
        except OSError as err:  # e.g. the disk filled up while joining the output
            state, code, message = "failed", EXIT_FAILED, f"I/O error: {err}"
        finally:
            if pool is not None:
                pool.shutdown(graceful=state == "done", progress=self._records_arrived)
            self._start_readers()
            for reader in self.readers:  # the workers are gone: read what is left, then stop
                reader.finish()
            if joiner is not None:
                failed = joiner.close()  # the workers are gone: cut what they wrote past the committed end
                if failed is not None and code in (EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM):
                    state, code, message = "failed", EXIT_FAILED, f"I/O error: {failed}"
            if traces_file is not None:
                try:
                    traces_file.close()
                except OSError as err:  # its last flush failed (a full disk, say)
                    if code in (EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM):
                        state, code, message = "failed", EXIT_FAILED, f"I/O error writing --save-traces: {err}"
            final = None
            if seg is not None:
                seg.set_system(
                    ended_at_ms=int(time.time() * 1000), workers_restarted=pool.restarted if pool else 0,
                    traces_delivered=self.collector.traces_delivered,
                    errors_delivered=self.collector.errors_delivered,
                    records_repeated=self.collector.repeats, dashboard_dropped=self.collector.forward_dropped,
                )  # fmt: skip
                seg.set_state(state)
            if seg is not None:
                final = self.final_stats()
                if self.dashboard is not None:
                    self.dashboard.finish(final, lambda: self._signal is not None)
                seg.close()
            if dash_proc is not None:
                dash_proc.stop()  # if it never got the run, nothing above stopped it
            if self.part_dir:
                shutil.rmtree(self.part_dir, ignore_errors=True)
            self._restore_signals(old_handlers)
        if final is None:  # it failed before the segment existed: nothing ran
            raise MpobsError(message or "the run could not start")
        return RunOutcome(
            final, code, message, dict(self.error_types),
            self.collector.recent_errors(100), self.collector.recent_traces(100),
        )  # fmt: skip

    def _new_queue(self, q: Any) -> None:
        """A worker got its record queue: read it (the thread starts after the fork)."""
        self.readers.append(QueueReader(q, self.collector, name=f"mpobs-records-{len(self.readers)}"))

    def _start_readers(self) -> None:
        for reader in self.readers:
            if reader.thread.ident is None:
                reader.start()

    def _unstick(self) -> None:
        """The stats lock cannot be had: free it if a dead worker or dashboard holds it."""
        dead = self.pool.dead_pids() if self.pool is not None else set()
        if self.dashboard is not None and not self.dashboard.proc.is_alive():
            dead.add(self.dashboard.proc.pid)
        seg = self.seg
        if seg is None or (dead and seg.release_for(dead)):
            return
        # A process killed between taking the lock and writing its pid leaves no holder
        # to check. When no worker is left alive and the lock stays taken for 3 s, only
        # such a dead process can hold it (the dashboard holds it for microseconds).
        now = time.monotonic()
        if now - self._stuck_last > 2 * LOCK_WAIT:
            self._stuck_since = now
        self._stuck_last = now
        no_workers = self.pool is None or not self.pool.any_alive()
        if no_workers and seg.lock_holder() == 0 and now - self._stuck_since >= 3.0:
            seg.force_release()

    def live_stats(self) -> dict[str, Any]:
        assert self.seg is not None and self.meta is not None
        return build_stats(self.seg.snapshot(), self.meta, self._counters(), live=True)

    def final_stats(self) -> dict[str, Any]:
        assert self.seg is not None and self.meta is not None
        stats = build_stats(self.seg.snapshot(), self.meta, self._counters(), live=False)
        stats["system"]["traces_delivered"] = self.collector.traces_delivered
        stats["system"]["errors_delivered"] = self.collector.errors_delivered
        stats["edges"] = self.meta.edges  # so `mpobs dashboard --metrics` can draw the DAG
        stats["meta"] = {"processors": self.meta.processors, "input": self.meta.input_name}
        stats["errors_by_type"] = [
            {"processor": p, "error_type": t, "count": n} for (p, t), n in sorted(self.error_types.items())
        ]
        return stats

    # -- the loop ------------------------------------------------------------
    def _loop(self, pool: LocalPool, joiner: OutputJoiner, plan: Any) -> None:
        seg = self.seg
        assert seg is not None
        retry: deque[Task] = deque()
        attempts: Counter[int] = Counter()
        planned = 0  # tasks taken from the plan so far
        exhausted = False
        last_tick = 0.0
        # A task that killed its worker MAX_TASK_ATTEMPTS times: the run fails once every
        # task before it is in the output (tasks after it are not started any more).
        giving_up: tuple[int, str] | None = None
        # Tasks planned but not yet in the output, at most: when one task stalls, the others'
        # finished output waits for it (in worker memory or part files), so no more is started.
        backlog = BACKLOG_PER_WORKER * pool.n

        def next_task() -> Task | None:
            nonlocal exhausted, planned
            if retry:
                return retry.popleft()  # always: the task the output waits for may be among them
            if exhausted or giving_up is not None or planned - self._next_out >= backlog:
                return None
            task = next(plan, None)
            if task is None:
                exhausted = True
                seg.set_system(tasks_total=planned, lines_total=self._lines_total)
                return None
            planned += 1
            self._lines_total = task.last_line
            return task

        self._lines_total = 0
        while True:
            pool.fill(next_task)
            if giving_up is not None and self._next_out >= giving_up[0]:
                raise _Stop("failed", EXIT_FAILED, giving_up[1])
            if exhausted and not retry and pool.idle() and self._next_out == planned:
                return
            events = pool.wait([], timeout=0.1)
            self._start_readers()  # for workers started again after a crash
            for ev in events:
                if ev.kind == "died":
                    self._outputs_lost(ev)
                    # The first lost task is the one the worker was running; the rest only waited.
                    running = ev.lost[0] if ev.lost else None
                    again = ev.lost + ev.held
                    if running is not None:
                        attempts[running.index] += 1
                        if attempts[running.index] >= MAX_TASK_ATTEMPTS:
                            msg = f"{running.describe()} killed its worker {MAX_TASK_ATTEMPTS} times; giving up"
                            if giving_up is None or running.index < giving_up[0]:
                                giving_up = (running.index, msg)
                    if giving_up is not None:
                        again += list(retry)
                        retry.clear()
                        again = [t for t in again if t.index < giving_up[0]]
                    retry.extendleft(sorted(again, key=lambda t: t.index, reverse=True))
                elif ev.kind == "fatal":
                    raise _Stop("failed", EXIT_FAILED, f"worker {ev.slot} failed: {ev.detail}")
                else:
                    self._output_event(ev, joiner)
            self._advance_output(pool, joiner)
            self._check_stop()
            if self.dashboard is not None:
                self.dashboard.poll()  # warns once if it died; the run goes on
                if self.collector.forward_dropped:
                    seg.set_system(dashboard_dropped=self.collector.forward_dropped)
            now = time.monotonic()
            if self.opts.on_tick is not None and now - last_tick >= 0.2:
                last_tick = now
                self.opts.on_tick(self)

    # -- the output, in task order ---------------------------------------------
    # A finished task waits in _done until every task before it is in the output. With
    # our own output file (joiner.direct) the worker writes it: once every task before
    # one is written, that task is granted the offset where its output starts (a task
    # re-run after a crash may differ in size, so no offset is given earlier), and it
    # writes as it goes (worker.DirectOutput). Otherwise (stdout) its part file is joined
    # here. Either way its counts are committed when it is in the output.

    def _output_event(self, ev: PoolEvent, joiner: OutputJoiner) -> None:
        if ev.kind == "done":
            assert ev.task is not None and ev.vec is not None and ev.result is not None
            self._done[ev.task.index] = (ev.vec, ev.result, ev.slot)
        elif ev.kind == "written":
            assert ev.task is not None and self._writing and ev.task.index == self._next_out
            self._writing = False
            vec, result, _ = self._done.pop(ev.task.index)
            joiner.bytes_written += result.out_bytes
            self._commit(vec, result)
            self._next_out += 1

    def _outputs_lost(self, ev: PoolEvent) -> None:
        """A worker died: finished outputs it still held leave the pending row, and run again."""
        assert self.seg is not None
        for task in ev.held:
            vec, _, _ = self._done.pop(task.index)
            self.seg.uncomplete(vec)
        if any(t.index == self._next_out for t in ev.lost + ev.held):
            # Its grant died with it. Whatever it wrote is past the committed end: the
            # task's next run writes over it, and the end is cut when the run ends.
            self._writing = False

    def _advance_output(self, pool: LocalPool, joiner: OutputJoiner) -> None:
        """Put what is next in task order into the output: grant its offset, or join its part."""
        if joiner.direct:
            if not self._writing:
                slot = pool.holder(self._next_out)
                if slot is not None:
                    pool.grant(slot, self._next_out, joiner.bytes_written)
                    self._writing = True
            return
        while self._next_out in self._done:
            vec, result, _ = self._done.pop(self._next_out)
            part = self._part_path(self._next_out)
            joiner.append(part)
            os.unlink(part)
            self._commit(vec, result)
            self._next_out += 1

    def _commit(self, vec: np.ndarray, result: TaskResult) -> None:
        """A task is in the output: its counts become committed."""
        assert self.seg is not None
        self.seg.commit(vec)
        for pid, counts in result.key_counts.items():
            self.counters[pid].update(counts)
        self.error_types.update(result.error_types)
        if self.dashboard is not None and result.key_counts:
            now = time.monotonic()
            if now - self._counters_sent_at >= 1.0:  # sorting many keys is not free: once a second
                self._counters_sent_at = now
                self.dashboard.publish_counters(self._counters())

    def _part_path(self, index: int) -> str:
        return os.path.join(self.part_dir, f"part-{index:09d}")

    def _check_stop(self) -> None:
        if self._signal is not None:
            if self._signal == signal.SIGTERM:
                raise _Stop("interrupted", EXIT_SIGTERM, "terminated (SIGTERM)")
            raise _Stop("interrupted", EXIT_SIGINT, "interrupted (Ctrl-C)")
        if self.collector.write_error is not None:
            raise _Stop("failed", EXIT_FAILED, f"cannot write the --save-traces file: {self.collector.write_error}")
        max_errors = self.opts.max_errors
        if max_errors is not None and self.seg is not None:
            total = self.seg.live_errors()
            # Workers that saw the limit stop by themselves (stop event); the rows of one
            # that has exited are already dropped, so the live total may be lower by now.
            if total >= max_errors or (self.pool is not None and self.pool.stop_event.is_set()):
                deadline = time.monotonic() + 1.0  # its record may still be on the way
                while self.collector.last_error is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                last = self.collector.last_error
                what = (
                    f"; last: {last['processor']} on {last['line_id']}: {last['error_type']}: {last['message']}"
                    if last
                    else ""
                )
                # Workers stop within a batch of the limit; errors of tasks that did not finish
                # are counted here but not in the saved metrics, which match the written output.
                counted = f" ({total} errors counted)" if total >= max_errors else ""
                msg = f"stopped: --max-errors {max_errors} reached{counted}{what}"
                raise _Stop("failed", EXIT_MAX_ERRORS, msg)

    def _records_arrived(self) -> int:
        """How many record messages arrived since the last call (shutdown waits while they do)."""
        now = self.collector.messages
        new, self._last_messages = now - self._last_messages, now
        return new

    def _counters(self) -> dict[str, dict[str, int]]:
        return {pid: dict(c.most_common()) for pid, c in self.counters.items()}

    # -- signals -------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        old: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            self._signal = signum
            if self.pool is not None:
                self.pool.stopping = True  # a worker that dies now is not started again

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, handler)
        except ValueError:
            pass  # not the main thread: the caller handles signals
        return old

    def _restore_signals(self, old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

