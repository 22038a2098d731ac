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

from mpobs.defaults import BACKLOG_PER_WORKER, BLOCKS_PER_WORKER, ENDING_WAIT, SAVED_RECENT
from mpobs.errors import (
    EXIT_ALERT,
    EXIT_FAILED,
    EXIT_MAX_ERRORS,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    MpobsError,
)
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
from mpobs.metrics.document import RunMeta, SlowestTasks, build_stats
from mpobs.metrics.layout import UNKNOWN, Layout
from mpobs.metrics.lock import Unsticker
from mpobs.metrics.segment import StatsSegment
from mpobs.output.joiner import OutputClosed, OutputJoiner
from mpobs.pipeline.dag import Pipeline
from mpobs.run.options import RunOptions, RunOutcome, check_outputs, remove_leftovers
from mpobs.run.ordered_output import OrderedOutput
from mpobs.run.scheduler import GiveUp, Scheduler
from mpobs.run.signals import RunSignals
from mpobs.tracing.records import EventCollector
from mpobs.tracing.traces import expand as expand_trace

if TYPE_CHECKING:
    from mpobs.alerts.watch import AlertWatch
    from mpobs.run.checkpoint import Checkpointer


Outcome = tuple[str, int, str | None]  # the run's end state, exit code and message


class _Stop(Exception):
    def __init__(self, state: str, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.state, self.code, self.message = state, code, message


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
        self._limit_reached = False
        self._ending: tuple[_Stop, float] | None = None  # --fail-on-alert fired: end once the output has caught up
        self._final: RunOutcome | None = None

    # -- the story of a run --------------------------------------------------
    def run(self) -> RunOutcome:
        opts = self.opts
        self.source = source = open_inputs(
            [opts.inputs] if isinstance(opts.inputs, str) else opts.inputs, follow=opts.follow
        )
        self.meta = meta = RunMeta.of(
            self.pipeline,
            source,
            self.executor.capacity,
            trace=opts.trace,
            trace_sample=opts.trace_sample if opts.trace else 0.0,
            output=opts.output_path,
            executor=self.executor.name,
            stall_after=opts.stall_after,
        )
        self._check(source)
        remove_leftovers()
        ids, names = self.pipeline.ids, meta.record_names()
        self.collector.expand = lambda t: expand_trace(t, names, ids)
        outcome: Outcome | None = None  # stays None while an exception goes up (a refusal, a bug)
        sink: OutputJoiner | None = None
        self.signals.install()
        try:
            self.seg = self._make_segment(source)
            self.output_wait = OutputWait(self.seg)
            self.stalls = StallWatch(
                self.seg.layout.slots,
                self.seg.doing_now,
                opts.stall_after,
                [(n.id, getattr(n.proc, "ref", None)) for n in self.pipeline.nodes],
                meta.input_names,
            )
            if opts.save_traces:
                from mpobs.tracing.tracefile import header  # only with --save-traces (as the workers' recorder)

                self.collector.open_traces(opts.save_traces, header(self.pipeline, names))
            self._serve_dashboard()
            if opts.alerts is not None:
                from mpobs.alerts.watch import AlertWatch

                self.alerts = AlertWatch(opts.alerts, lambda line: sys.stderr.write(f"mpobs: {line}\n"))
            resume = self.checkpoints.resume_output() if self.checkpoints is not None else None
            sink = OutputJoiner(opts.output_path, resume)  # only now: it replaces, empties or cuts the file
            if self.checkpoints is not None:
                # At once: a followed file rotated before the first commit is found, and
                # an output that logrotate renamed away while we were down is not named again.
                self._save_checkpoint(sink, force=True)
            output = OrderedOutput(sink, self.executor, self._commit, self._reopened)
            self.seg.set_state("running")
            sink.before_fork()
            if source.needs_store:  # before the executor starts: the local pool's workers fork with it
                slots = BLOCKS_PER_WORKER * self.executor.capacity
                self.store = self.executor.block_store(slots, opts.task_bytes)
            self.executor.start(self._context(source, sink))
            plan = source.tasks(opts.task_bytes, self.store)
            self._loop(Scheduler(plan, BACKLOG_PER_WORKER * self.executor.capacity), output)
            if self._ending is not None:  # every task ended while the alert's run was ending
                raise self._ending[0]
            self.stalls.check()  # a stall that ended with the last task is said to be over
            if source.damage is not None:  # everything before the damage is in the output and counted
                raise _Stop("failed", EXIT_USAGE, source.damage)
            stopped = self.signals.stop_following
            outcome = (
                "done",
                EXIT_OK,
                None
                if stopped is None
                else f"stopped following ({signal.Signals(stopped).name}); everything read is in the output",
            )
        except _Stop as stop:
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
            _, _, message = self._wind_down(outcome or ("failed", EXIT_FAILED, None), sink, report=outcome is not None)
            self.signals.restore()
        if self._final is None:  # it failed before the segment existed: nothing ran
            raise MpobsError(message or "the run could not start")
        return self._final

    def _check(self, source: InputSet) -> None:
        """Before any output is touched: the outputs, the checkpoint and the executor can work."""
        opts = self.opts
        try:
            check_outputs(source, opts)
            if opts.checkpoint is not None:
                from mpobs.run.checkpoint import Checkpointer  # its hashing and JSON: only for runs that ask

                self.checkpoints = Checkpointer(
                    opts.checkpoint,
                    opts.checkpoint_every,
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
            trace_rate=opts.trace_sample if opts.trace else 0.0,
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
        executor, source, last_tick, announced, held = self.executor, self.source, 0.0, False, False
        assert source is not None
        wake = [source.waitable()]
        while True:
            while self._ending is None and executor.room() > 0 and (task := sched.next(output.next)) is not None:
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
                raise _Stop("failed", EXIT_FAILED, str(err)) from None
            for event in executor.poll(0.1, wake):
                self._handle(event, sched, output)
            source.drain()
            if self.signals.take_reopen():
                output.reopen_asked = True
            self.output_wait.hold()  # a slow output (a pipe's reader) stops the run here
            output.advance()
            self.output_wait.release()
            if self._ending is not None and (not output.waiting or time.monotonic() > self._ending[1]):
                raise self._ending[0]  # no finished task is left out of the output
            if self.checkpoints is not None and self.checkpoints.due():
                self._save_checkpoint(output.sink)
            if self.opts.follow:
                if self.signals.stop_following is not None and not source.stopped:
                    source.stop_reading()
                source.refresh()
            self._check_stop()
            self._poll_dashboard()
            self._evaluate_alerts()  # the rules that are due: --alerts-interval may be 0.1 s
            now = time.monotonic()
            if now - last_tick >= 0.2:
                last_tick = now
                self.stalls.check()  # a call running longer than --stall-after: said on stderr
                if self.opts.on_tick is not None:
                    self.opts.on_tick(self)

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
            raise _Stop("failed", EXIT_FAILED, event.message(self.opts.output_path))
        elif isinstance(event, LimitReached):
            self._limit_reached = True

    def _save_checkpoint(self, sink: OutputJoiner, force: bool = False) -> None:
        assert self.checkpoints is not None and self.seg is not None and self.source is not None
        from mpobs.run.checkpoint import CheckpointError

        try:
            self.checkpoints.save(
                sink.fd, sink.at, self.seg, self._counters(), dict(self.error_types), self.source, force=force
            )
        except CheckpointError as err:
            raise _Stop("failed", EXIT_FAILED, str(err)) from None

    def _reopened(self, sink: OutputJoiner, what: str) -> None:
        """SIGHUP reopened the output: say so, and checkpoint the new file before anything goes into it."""
        assert self.seg is not None
        sys.stderr.write(f"mpobs: SIGHUP: {what}\n")
        self._set_system(output_reopens=self.seg.snapshot().sys("output_reopens") + 1)
        if self.checkpoints is not None:
            self._save_checkpoint(sink, force=True)

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
            self.dashboard.publish_counters(self._counters, lambda: self.slowest.rows(self.meta.input_names))

    # -- the end -------------------------------------------------------------
    def _wind_down(self, outcome: Outcome, sink: OutputJoiner | None, report: bool = True) -> Outcome:
        """Stop the executor, close the outputs (their failures fail the run), publish the final state."""
        state, code, message = outcome
        self.executor.shutdown(graceful=state == "done")
        if self.store is not None:
            self.store.close()  # a reader waiting for a slot stops
        if self.source is not None:
            self.source.close()
        clean = code in (EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM)
        if self.checkpoints is not None and sink is not None and self.seg is not None:
            try:
                self._save_checkpoint(sink)  # at exit, whatever ended the run: what is in the output
            except _Stop as stop:
                if clean:
                    state, code, message, clean = stop.state, stop.code, stop.message, False
        failed = sink.close() if sink is not None else None  # cuts what was written past the committed end
        if failed is not None and clean:
            state, code, message, clean = "failed", EXIT_FAILED, f"I/O error: {failed}", False
        failed = self.collector.close_traces()
        if failed is not None and clean:
            state, code, message = "failed", EXIT_FAILED, failed
        if self.seg is not None:
            if self.alerts is not None:  # a last evaluation; what still fires stays firing (AlertWatch.finish)
                self.alerts.finish(self.live_stats)
                if self.alerts.failed is not None and clean:
                    state, code, message = "failed", EXIT_ALERT, self.alerts.failed
            c = self.collector
            self._set_system(
                ended_at_ms=int(time.time() * 1000),
                workers_restarted=self.executor.restarted,
                traces_delivered=c.traces_delivered,
                errors_delivered=c.errors_delivered,
                records_repeated=c.repeats,
                dashboard_dropped=c.forward_dropped,
            )
            self.seg.set_state(state)
            final = self.final_stats()
            view = self.executor.view()
            if view is not None:
                final["executor"] = view  # after shutdown: the workers as last seen, with what they ran
            saved = dict(
                final, recent_errors=c.recent_errors(SAVED_RECENT), recent_traces=c.recent_traces(SAVED_RECENT)
            )
            if code == EXIT_MAX_ERRORS and message:
                # The limit counts errors of tasks still running; the output and the final counts hold
                # only the tasks that finished: say both, so that the two figures never seem to disagree.
                s = final["system"]
                message += (
                    f"; the output and the counts cover the {s['total_lines']:,} input lines finished "
                    f"before the stop ({s['total_errors']:,} errors among them)"
                )
            self._final = RunOutcome(final, saved, code, message)
            try:
                if report and self.opts.on_end is not None:  # the report, before a dashboard lingers on
                    self.opts.on_end(self._final)
                if self.dashboard is not None:
                    self.dashboard.finish(final, lambda: self.signals.stop is not None)
            finally:
                self.seg.close()
        if self.dash_proc is not None:
            self.dash_proc.stop()  # if it never got the run, nothing above stopped it
        return state, code, message

    def live_stats(self) -> dict[str, Any]:
        return self.final_stats(live=True)

    def final_stats(self, live: bool = False) -> dict[str, Any]:
        assert self.seg is not None and self.meta is not None
        ended = (
            {} if live else {"error_types": dict(self.error_types), "slowest": self.slowest.rows(self.meta.input_names)}
        )
        return build_stats(
            self.seg.snapshot(),
            self.meta,
            self._counters(),
            live=live,
            alerts=self.alerts.doc() if self.alerts is not None else None,
            **ended,
        )

    # -- watching --------------------------------------------------------------
    def _check_stop(self) -> None:
        if self.signals.stop is not None:
            if self.signals.stop == signal.SIGTERM:
                raise _Stop("interrupted", EXIT_SIGTERM, "terminated (SIGTERM)")
            raise _Stop("interrupted", EXIT_SIGINT, "interrupted (Ctrl-C)")
        if self.collector.write_error is not None:
            raise _Stop(
                "failed",
                EXIT_FAILED,
                f"I/O error: cannot write the --save-traces file "
                f"{self.collector.traces_path!r}: {self.collector.write_error}",
            )
        if self.opts.max_errors is not None and self.seg is not None:
            # Workers that saw the limit stop by themselves; the rows of one that has
            # exited are already dropped, so the live total may be lower by now.
            why = self.collector.max_errors_stop(self.opts.max_errors, self.seg.live_errors(), self._limit_reached)
            if why is not None:
                raise _Stop("failed", EXIT_MAX_ERRORS, why)

    def _evaluate_alerts(self) -> None:
        if self.alerts is None or not self.alerts.tick(self.live_stats):
            return
        if self.dashboard is not None:
            self.dashboard.publish_alerts(self.alerts.doc())
        if self.alerts.failed is not None and self._ending is None:
            # Live counts include finished tasks not yet in the output: no task starts now, and the run
            # ends once every finished task is in it (``_loop``, within ENDING_WAIT): what the alert counted.
            self._ending = (_Stop("failed", EXIT_ALERT, self.alerts.failed), time.monotonic() + ENDING_WAIT)

    def _poll_dashboard(self) -> None:
        if self.dashboard is not None:
            self.dashboard.poll(self.executor.view)  # warns once if it died; the run goes on
            if self.collector.forward_dropped:
                self._set_system(dashboard_dropped=self.collector.forward_dropped)

    def _dead_pids(self) -> set[int]:
        """Processes of the run that may have died holding the stats lock: workers, the dashboard."""
        return self.executor.dead_pids() | (self.dashboard.dead_pids() if self.dashboard is not None else set())

    def _set_system(self, **values: int) -> None:
        assert self.seg is not None
        self.seg.set_system(**values)

    def _counters(self) -> dict[str, dict[str, int]]:
        return {pid: dict(c.most_common()) for pid, c in self.counters.items()}
