"""The coordinator: the story of one run, from checked input to committed output and final stats.

It plans tasks from an InputSource, has an Executor run them (``mpobs.executors.base``),
lets the Scheduler pick what runs next, puts finished tasks into the output in
order (``mpobs.run.ordered_output``) and commits their counts into the stats segment as they
go in. It knows no processes, queues or shared-memory offsets.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from mpobs.defaults import BACKLOG_PER_WORKER, BLOCKS_PER_WORKER
from mpobs.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, MpobsError
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
from mpobs.executors.local.pool import LocalPool
from mpobs.executors.task import TaskResult, TaskSettings
from mpobs.inputs.base import FileSource, Task
from mpobs.inputs.blockstore import BlockStore
from mpobs.inputs.inputset import InputSet, open_inputs
from mpobs.metrics.activity import OutputWait, StallWatch
from mpobs.metrics.document import Parts, RunMeta, SlowestTasks, build_stats
from mpobs.metrics.layout import UNKNOWN, Layout
from mpobs.metrics.lock import Unsticker
from mpobs.metrics.segment import StatsSegment
from mpobs.output.joiner import OutputClosed, OutputJoiner
from mpobs.pipeline.dag import Pipeline
from mpobs.run.ending import Ending, Outcome, wind_down
from mpobs.run.options import RunOptions, RunOutcome, check_outputs, remove_leftovers
from mpobs.run.ordered_output import OrderedOutput
from mpobs.run.scheduler import GiveUp, Scheduler
from mpobs.run.signals import RunSignals
from mpobs.run.watchers import Alerts, Stop, Watcher, watchers_for
from mpobs.tracing.records import EventCollector
from mpobs.tracing.traces import expand as expand_trace

if TYPE_CHECKING:
    from mpobs.alerts.watch import AlertWatch
    from mpobs.run.checkpoint import Checkpointer


class Coordinator:
    """Runs one pipeline over one input, once. ``run`` always cleans up what it made."""

    def __init__(
        self,
        pipeline: Pipeline,
        opts: RunOptions,
        collector: EventCollector | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.opts = opts
        self.executor: Executor = executor or LocalPool(opts.workers)
        self.source: InputSet | None = None
        self.store: BlockStore | None = None
        self.checkpoints: Checkpointer | None = None
        self.dash_proc = opts.dashboard_process  # forked early by the CLI, or made by _make_segment
        self.collector = collector or EventCollector()
        self.counters: dict[str, Counter[str]] = {n.id: Counter() for n in pipeline.nodes if n.proc.counts_keys}
        self.error_types: Counter[tuple[str, str]] = Counter()
        self.slowest = SlowestTasks()
        self.seg: StatsSegment | None = None
        self.meta: RunMeta | None = None
        self.dashboard: Any = None
        self.alerts: AlertWatch | None = None
        self.signals = RunSignals(opts.follow, opts.output_path is not None, self.executor.stop_restarts)
        self.limit_reached = False
        self._watchers: list[Watcher] = []
        self._alerting: Alerts | None = None  # its ``ending``: --fail-on-alert fired, no task starts now
        self._final: RunOutcome | None = None
        self._sink: OutputJoiner | None = None

    # -- the story of a run --------------------------------------------------
    def run(self) -> RunOutcome:
        source = self._open()
        outcome: Outcome | None = None  # stays None while an exception goes up (a refusal, a bug)
        self.signals.install()
        try:
            output = self._start(source)
            self._loop(Scheduler(source.tasks(self.opts.task_bytes, self.store), self._backlog()), output)
            outcome = self._how_it_ended(source)
        except Stop as stop:
            outcome = (stop.state, stop.code, stop.message)
        except OutputClosed:
            outcome = ("interrupted", EXIT_OK, None)
        except MpobsError:
            raise  # a clear message for the user (InputError is an OSError too)
        except OSError as err:  # e.g. the disk filled up while writing the output
            outcome = ("failed", EXIT_FAILED, f"I/O error: {err}")
        finally:
            # No report for a run an exception ends: its caller says what went wrong, and the
            # outputs it refused to touch (--save-metrics) stay untouched.
            ending = Ending(*(outcome or ("failed", EXIT_FAILED, None)))
            self._final = wind_down(self, ending, self._sink, report=outcome is not None)
            self.signals.restore()
        if self._final is None:  # it failed before the segment existed: nothing ran
            raise MpobsError(ending.message or "the run could not start")
        return self._final

    def _open(self) -> InputSet:
        """The inputs, opened and described; everything checked before any output is touched."""
        opts = self.opts
        self.source = source = open_inputs(
            [opts.inputs] if isinstance(opts.inputs, str) else opts.inputs, follow=opts.follow
        )
        self.meta = meta = RunMeta.of(
            self.pipeline,
            source,
            self.executor.capacity,
            trace=opts.tracing is not None,
            trace_sample=opts.trace_rate,
            output=opts.output_path,
            executor=self.executor.name,
            stall_after=opts.stall_after,
        )
        self._check(source)
        remove_leftovers()
        ids, names = self.pipeline.ids, meta.record_names()
        self.collector.expand = lambda t: expand_trace(t, names, ids)
        return source

    def _start(self, source: InputSet) -> OrderedOutput:
        """The segment, the records, the dashboard and alerts, the output (only now is it touched), the executor."""
        opts = self.opts
        assert self.meta is not None
        self.seg = self._make_segment(source)
        self.output_wait = OutputWait(self.seg)
        if opts.save_traces:
            from mpobs.tracing.tracefile import header  # only with --save-traces (as the workers' recorder)

            self.collector.open_traces(opts.save_traces, header(self.pipeline, self.meta.record_names()))
        self._serve_dashboard()
        if opts.alerts is not None:
            from mpobs.alerts.watch import AlertWatch

            self.alerts = AlertWatch(opts.alerts, _say)
        resume = self.checkpoints.resume_output() if self.checkpoints is not None else None
        self._sink = sink = OutputJoiner(opts.output_path, resume)  # it replaces, empties or cuts the file
        if self.checkpoints is not None:
            # At once: a followed file rotated before the first commit is found, and
            # an output that logrotate renamed away while we were down is not named again.
            self.save_checkpoint(sink, force=True)
        output = OrderedOutput(sink, self.executor, self._commit, self._reopened)
        self.stalls = StallWatch(
            self.seg.layout.slots,
            self.seg.doing_now,
            opts.stall_after,
            [(n.id, getattr(n.proc, "ref", None)) for n in self.pipeline.nodes],
            self.meta.input_names,
        )
        self._watchers = watchers_for(self, output)
        self._alerting = next((w for w in self._watchers if isinstance(w, Alerts)), None)
        self.seg.set_state("running")
        sink.before_fork()
        if source.needs_store:  # before the executor starts: the local pool's workers fork with it
            self.store = self.executor.block_store(BLOCKS_PER_WORKER * self.executor.capacity, opts.task_bytes)
        self.executor.start(self._context(source, sink))
        return output

    def _backlog(self) -> int:
        return BACKLOG_PER_WORKER * self.executor.capacity

    def _how_it_ended(self, source: InputSet) -> Outcome:
        """Every task is in the output: how the run ends."""
        if self._alerting is not None and self._alerting.ending is not None:  # every task ended meanwhile
            raise self._alerting.ending[0]
        self.stalls.check()  # a stall that ended with the last task is said to be over
        if source.damage is not None:  # everything before the damage is in the output and counted
            raise Stop("failed", EXIT_USAGE, source.damage)
        stopped = self.signals.stop_following
        if stopped is None:
            return "done", EXIT_OK, None
        return "done", EXIT_OK, f"stopped following ({signal.Signals(stopped).name}); everything read is in the output"

    def _check(self, source: InputSet) -> None:
        """Before any output is touched: the outputs, the checkpoint and the executor can work."""
        opts = self.opts
        assert self.meta is not None
        try:
            check_outputs(source, opts)
            if opts.checkpoint is not None:
                from mpobs.run.checkpoint import Checkpointer  # its hashing and JSON: only for runs that ask

                self.checkpoints = Checkpointer(
                    opts.checkpoint.path,
                    opts.checkpoint.every,
                    self.meta.processors,
                    self._layout(source).columns(),
                    source,
                    opts.output_path,
                )
            # The input files tasks read by path (not blocks): an executor elsewhere must see them.
            self.executor.prepare(self.pipeline, [s.path for s in source.sources if isinstance(s, FileSource)])
        except BaseException:
            source.close()
            raise

    def _make_segment(self, source: InputSet) -> StatsSegment:
        opts = self.opts
        if opts.dashboard is not None and self.dash_proc is None:
            from dashboard_app.process import DashboardProcess

            # It binds first: a port in use fails the run before any work.
            self.dash_proc = DashboardProcess(multiprocessing.get_context("fork"), opts.dashboard)
        lock = self.dash_proc.lock if self.dash_proc is not None else multiprocessing.get_context("fork").Lock()
        seg = StatsSegment.create(self._layout(source), lock)
        seg.on_stuck = Unsticker(seg, self._dead_pids, self.executor.any_alive)
        seg.set_system(bytes_total=UNKNOWN if source.size is None else source.size, workers=self.executor.capacity)
        source.track(seg)
        if self.checkpoints is not None:
            self.checkpoints.restore(seg, self.counters, self.error_types, source)
        return seg

    def _layout(self, source: InputSet) -> Layout:
        return Layout(
            tuple(self.pipeline.ids),
            tuple(self.pipeline.tags),
            self.executor.capacity,
            len(source.sources),
            tuple(self.pipeline.timed),
        )

    def _serve_dashboard(self) -> None:
        if self.dash_proc is None:
            return
        assert self.seg is not None

        def gone(pid: int) -> None:
            self.collector.forward = None
            if self.seg is not None:
                self.seg.release_for({pid})  # it may have died holding the stats lock

        # Its process was forked before the executor's record queues, so it holds none of their ends.
        self.dashboard = self.dash_proc.serve_run(self.seg.name, self.seg.layout, self.meta, gone)
        self.collector.forward = self.dashboard.queue

    def _context(self, source: InputSet, sink: OutputJoiner) -> RunContext:
        opts = self.opts
        assert self.meta is not None and self.seg is not None
        settings = TaskSettings(
            self.meta.record_names(),
            batch_lines=opts.batch_lines,
            trace_rate=opts.trace_rate,
            event_chunk=opts.event_chunk,
            max_errors=opts.max_errors,
            save_traces=bool(opts.save_traces),
        )
        return RunContext(
            self.pipeline,
            settings,
            self.seg,
            self.collector,
            wait_traces=bool(opts.save_traces),
            out_fd=sink.fd if sink.direct else None,
            store=self.store,
            call_timeout=opts.call_timeout,
        )

    def _loop(self, sched: Scheduler, output: OrderedOutput) -> None:
        """Schedule tasks, take the executor's events, move finished tasks into the output; then the watchers."""
        executor, source, announced, held = self.executor, self.source, False, False
        assert source is not None
        wake = [source.waitable()]
        alerting = self._alerting
        while True:
            starting = alerting is None or alerting.ending is None
            while starting and executor.room() > 0 and (task := sched.next(output.next)) is not None:
                executor.submit(task)
            if (executor.room() > 0 and sched.held_back(output.next)) != held:  # workers wait for the output now
                held = not held
                self.output_wait.hold() if held else self.output_wait.release()
            if sched.exhausted and not announced:  # the totals are known now
                announced = True
                self._set_system(tasks_total=source.tasks_planned, lines_total=source.lines_planned)
            try:
                if sched.done(output.next):
                    return
            except GiveUp as err:
                raise Stop("failed", EXIT_FAILED, str(err)) from None
            for event in executor.poll(0.1, wake):
                self._handle(event, sched, output)
            source.drain()
            for watcher in self._watchers:
                watcher.before_output()
            self.output_wait.hold()  # a slow output (a pipe's reader) stops the run here
            output.advance()
            self.output_wait.release()
            now = time.monotonic()
            for watcher in self._watchers:
                watcher.tick(now)

    def _handle(self, event: Event, sched: Scheduler, output: OrderedOutput) -> None:
        assert self.seg is not None
        if isinstance(event, TaskDone):
            result = event.result
            if not result.pending:
                self.seg.complete(result.counts)
            if result.traces or result.errors or result.saved:
                self.collector.add(event.task.index, 0, result.traces, result.errors, result.saved)
            output.done(event.task, result)
        elif isinstance(event, TaskWritten):
            output.written(event.index)
        elif isinstance(event, TaskLost):
            finished = output.lost(event.task)
            if (finished is not None) != event.finished:
                raise RuntimeError(
                    f"internal error: {event.task.describe()} lost, finished={event.finished}, "
                    f"but the output {'had' if finished else 'did not have'} its result"
                )
            if finished is not None:  # its counts were pending; they come again with its next run
                self.seg.uncomplete(finished.counts)
            sched.lost(event.task, event.fault, event.where)
        elif isinstance(event, WorkerFailed):
            raise Stop("failed", EXIT_FAILED, event.message(self.opts.output_path))
        elif isinstance(event, LimitReached):
            self.limit_reached = True

    def save_checkpoint(self, sink: OutputJoiner, force: bool = False) -> None:
        assert self.checkpoints is not None and self.seg is not None and self.source is not None
        from mpobs.run.checkpoint import CheckpointError

        try:
            self.checkpoints.save(
                sink.fd, sink.at, self.seg, self._counters(), dict(self.error_types), self.source, force=force
            )
        except CheckpointError as err:
            raise Stop("failed", EXIT_FAILED, str(err)) from None

    def _reopened(self, sink: OutputJoiner, what: str) -> None:
        """SIGHUP reopened the output: say so, and checkpoint the new file before anything goes into it."""
        assert self.seg is not None
        sys.stderr.write(f"mpobs: SIGHUP: {what}\n")
        self._set_system(output_reopens=self.seg.snapshot().sys("output_reopens") + 1)
        if self.checkpoints is not None:
            self.save_checkpoint(sink, force=True)

    def _commit(self, task: Task, result: TaskResult) -> None:
        """A task is in the output: its counts become committed."""
        assert self.seg is not None and self.source is not None
        self.seg.commit(result.counts)
        self.source.committed(task, self.store)
        for pid, counts in result.key_counts.items():
            self.counters[pid].update(counts)
        self.error_types.update(result.error_types)
        self.slowest.add(task, result.counts[self.seg.layout.run_col("task_ns")], result.worker)
        if self.dashboard is not None:
            names = self.meta.input_names if self.meta is not None else []
            self.dashboard.publish_counters(self._counters, lambda: self.slowest.rows(names))

    def live_stats(self) -> dict[str, Any]:
        return self.final_stats(live=True)

    def final_stats(self, live: bool = False, executor: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.seg is not None and self.meta is not None
        parts = Parts(
            self._counters(),
            alerts=self.alerts.doc() if self.alerts is not None else None,
            error_types=None if live else dict(self.error_types),
            slowest=None if live else self.slowest.rows(self.meta.input_names),
            executor=executor,
        )
        return build_stats(self.seg.snapshot(), self.meta, parts, live=live)

    # -- helpers ---------------------------------------------------------------
    def _dead_pids(self) -> set[int]:
        """Processes of the run that may have died holding the stats lock: workers, the dashboard."""
        return self.executor.dead_pids() | (self.dashboard.dead_pids() if self.dashboard is not None else set())

    def _set_system(self, **values: int) -> None:
        assert self.seg is not None
        self.seg.set_system(**values)

    def _counters(self) -> dict[str, dict[str, int]]:
        return {pid: dict(c.most_common()) for pid, c in self.counters.items()}


def _say(line: str) -> None:
    sys.stderr.write(f"mpobs: {line}\n")
