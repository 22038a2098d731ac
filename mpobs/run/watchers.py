"""The run's side jobs: each a Watcher the coordinator's loop ticks after every round of events.

A watcher looks at one thing (a signal, a checkpoint that is due, a followed file, the
dashboard, the alert rules, a stalled call) and acts on it; ``Stop`` ends the run with a
state, an exit code and a message. The loop itself only schedules tasks and moves
finished ones into the output (``mpobs.run.coordinator``).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from mpobs.defaults import ENDING_WAIT
from mpobs.errors import EXIT_ALERT, EXIT_FAILED, EXIT_MAX_ERRORS, EXIT_SIGINT, EXIT_SIGTERM

if TYPE_CHECKING:
    from dashboard_app.process import DashboardProcess
    from mpobs.alerts.watch import AlertWatch
    from mpobs.executors.base import Executor
    from mpobs.inputs.blockstore import BlockStore
    from mpobs.inputs.inputset import InputSet
    from mpobs.metrics.activity import StallWatch
    from mpobs.metrics.segment import StatsSegment
    from mpobs.output.joiner import OutputJoiner
    from mpobs.run.checkpoint import Checkpointer
    from mpobs.run.options import RunOptions
    from mpobs.run.ordered_output import OrderedOutput
    from mpobs.run.signals import RunSignals
    from mpobs.tracing.records import EventCollector

#: How often the slow side jobs run (stalled calls, the progress line).
TICK_S = 0.2


class RunParts(Protocol):
    """What the side jobs and the end of a run (``mpobs.run.ending``) use of it: the Coordinator's parts."""

    opts: RunOptions
    executor: Executor
    source: InputSet | None
    store: BlockStore | None
    seg: StatsSegment | None
    checkpoints: Checkpointer | None
    collector: EventCollector
    signals: RunSignals
    stalls: StallWatch
    alerts: AlertWatch | None
    dashboard: Any
    dash_proc: DashboardProcess | None
    limit_reached: bool

    def save_checkpoint(self, sink: OutputJoiner, force: bool = False) -> None: ...

    def live_stats(self) -> dict[str, Any]: ...

    def final_stats(self, live: bool = False, executor: dict[str, Any] | None = None) -> dict[str, Any]: ...


class Stop(Exception):
    """Ends the run: its state (``done``, ``failed``, ``interrupted``), exit code and message."""

    def __init__(self, state: str, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.state, self.code, self.message = state, code, message


class Watcher:
    """One side job of the run's loop. Each round (about every 0.1 s): ``before_output``, then the finished
    tasks go into the output, then ``tick``. Either may raise Stop."""

    def before_output(self) -> None:
        """At this round's task boundary, before finished tasks go into the output."""

    def tick(self, now: float) -> None:
        """After the finished tasks went into the output."""


class Interruptions(Watcher):
    """SIGINT and SIGTERM, a --save-traces file that cannot be written, and --max-errors."""

    def __init__(
        self,
        signals: RunSignals,
        collector: EventCollector,
        seg: StatsSegment,
        max_errors: int | None,
        limit_reached: Callable[[], bool],
    ) -> None:
        self.signals, self.collector, self.seg = signals, collector, seg
        self.max_errors, self.limit_reached = max_errors, limit_reached

    def tick(self, now: float) -> None:
        if self.signals.stop is not None:
            if self.signals.stop == signal.SIGTERM:
                raise Stop("interrupted", EXIT_SIGTERM, "terminated (SIGTERM)")
            raise Stop("interrupted", EXIT_SIGINT, "interrupted (Ctrl-C)")
        c = self.collector
        if c.write_error is not None:
            what = f"cannot write the --save-traces file {c.traces_path!r}"
            raise Stop("failed", EXIT_FAILED, f"I/O error: {what}: {c.write_error}")
        if self.max_errors is not None:
            # Workers that saw the limit stop by themselves; the rows of one that has
            # exited are already dropped, so the live total may be lower by now.
            why = c.max_errors_stop(self.max_errors, self.seg.live_errors(), self.limit_reached())
            if why is not None:
                raise Stop("failed", EXIT_MAX_ERRORS, why)


class Reopening(Watcher):
    """SIGHUP: the output is reopened (logrotate's ``create``) as soon as no task is being placed."""

    def __init__(self, signals: RunSignals, output: OrderedOutput) -> None:
        self.signals, self.output = signals, output

    def before_output(self) -> None:
        if self.signals.take_reopen():
            self.output.reopen_asked = True  # done by this round's advance, when no task is being placed


class Checkpoints(Watcher):
    """Writes a commit point when one is due (``--checkpoint-every``)."""

    def __init__(self, checkpoints: Checkpointer, save: Callable[[], None]) -> None:
        self.checkpoints, self.save = checkpoints, save

    def tick(self, now: float) -> None:
        if self.checkpoints.due():
            self.save()


class Following(Watcher):
    """``--follow``: looks for growth and rotation of the followed file; stops reading when asked."""

    def __init__(self, signals: RunSignals, source: InputSet) -> None:
        self.signals, self.source = signals, source

    def tick(self, now: float) -> None:
        if self.signals.stop_following is not None and not self.source.stopped:
            self.source.stop_reading()
        self.source.refresh()


class Dashboard(Watcher):
    """The dashboard's process: warned about once if it dies (the run goes on); records it could not take."""

    def __init__(self, dashboard: Any, executor: Executor, collector: EventCollector, seg: StatsSegment) -> None:
        self.dashboard, self.executor, self.collector, self.seg = dashboard, executor, collector, seg

    def tick(self, now: float) -> None:
        self.dashboard.poll(self.executor.view)
        if self.collector.forward_dropped:
            self.seg.set_system(dashboard_dropped=self.collector.forward_dropped)


class Alerts(Watcher):
    """The --alerts rules that are due (--alerts-interval may be 0.1 s); --fail-on-alert ends the run.

    Live counts include finished tasks not yet in the output: once a --fail-on-alert
    alert fires, no task starts (``ending``), and the run ends when every finished task
    is in the output (within ENDING_WAIT): the output holds what the alert counted. It is
    the first watcher ticked, so that such an ending is told before any other stop.
    """

    def __init__(
        self, alerts: AlertWatch, live_stats: Callable[[], dict[str, Any]], dashboard: Any, output: OrderedOutput
    ) -> None:
        self.alerts, self.live_stats, self.dashboard, self.output = alerts, live_stats, dashboard, output
        self.ending: tuple[Stop, float] | None = None

    def tick(self, now: float) -> None:
        if self.ending is not None and (not self.output.waiting or now > self.ending[1]):
            raise self.ending[0]  # no finished task is left out of the output
        if not self.alerts.tick(self.live_stats):
            return
        if self.dashboard is not None:
            self.dashboard.publish_alerts(self.alerts.doc())
        if self.alerts.failed is not None and self.ending is None:
            self.ending = (Stop("failed", EXIT_ALERT, self.alerts.failed), now + ENDING_WAIT)


class Stalls(Watcher):
    """Every TICK_S: a call running longer than --stall-after is said on stderr; the progress line."""

    def __init__(self, stalls: StallWatch, on_tick: Callable[[], None] | None) -> None:
        self.stalls, self.on_tick = stalls, on_tick
        self.last = 0.0

    def tick(self, now: float) -> None:
        if now - self.last >= TICK_S:
            self.last = now
            self.stalls.check()
            if self.on_tick is not None:
                self.on_tick()


def watchers_for(run: RunParts, output: OrderedOutput) -> list[Watcher]:
    """The side jobs of this run, in the order the loop ticks them."""
    assert run.seg is not None and run.source is not None
    opts, seg = run.opts, run.seg
    watchers: list[Watcher] = []
    if run.alerts is not None:
        watchers.append(Alerts(run.alerts, run.live_stats, run.dashboard, output))
    watchers.append(Reopening(run.signals, output))
    if run.checkpoints is not None:
        watchers.append(Checkpoints(run.checkpoints, lambda: run.save_checkpoint(output.sink)))
    if opts.follow:
        watchers.append(Following(run.signals, run.source))
    watchers.append(Interruptions(run.signals, run.collector, seg, opts.max_errors, lambda: run.limit_reached))
    if run.dashboard is not None:
        watchers.append(Dashboard(run.dashboard, run.executor, run.collector, seg))
    on_tick = opts.on_tick
    watchers.append(Stalls(run.stalls, None if on_tick is None else lambda: on_tick(run.live_stats)))
    return watchers
