"""How a run ends: its state, exit code and message (the first failure is the one told), and the winding down.

``wind_down`` runs whatever ended the run: it stops the executor, closes the inputs and
the outputs (a failure there fails a run that had ended cleanly), makes the last alert
evaluation and the final stats document, and hands it to the report and the dashboard.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mpobs.defaults import SAVED_RECENT
from mpobs.errors import EXIT_ALERT, EXIT_FAILED, EXIT_MAX_ERRORS, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM
from mpobs.metrics.document import Parts, place
from mpobs.run.options import RunOutcome
from mpobs.run.watchers import RunParts, Stop

if TYPE_CHECKING:
    from mpobs.metrics.segment import StatsSegment
    from mpobs.output.joiner import OutputJoiner

Outcome = tuple[str, int, str | None]  # the run's end state, exit code and message


class Ending:
    """The end of a run as it is wound down: a run that ended cleanly (done, or stopped by a signal) can
    still fail while its outputs are closed (``fail``); a run that failed keeps its first reason."""

    __slots__ = ("code", "message", "state")

    def __init__(self, state: str, code: int, message: str | None = None) -> None:
        self.state, self.code, self.message = state, code, message

    @property
    def clean(self) -> bool:
        return self.code in (EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM)

    def fail(self, code: int, message: str | None, state: str = "failed") -> None:
        """Something failed while winding down (``message`` None: nothing did); it counts only after a clean end."""
        if message is not None and self.clean:
            self.state, self.code, self.message = state, code, message

    def explain_max_errors(self, system: dict[str, Any]) -> None:
        """--max-errors counts errors of tasks still running; the output and the final counts hold only the
        tasks that finished: say both, so that the two figures never seem to disagree."""
        if self.code == EXIT_MAX_ERRORS and self.message:
            self.message += (
                f"; the output and the counts cover the {system['total_lines']:,} input lines finished "
                f"before the stop ({system['total_errors']:,} errors among them)"
            )


def wind_down(run: RunParts, end: Ending, sink: OutputJoiner | None, report: bool = True) -> RunOutcome | None:
    """Stop the executor, close the outputs (their failures fail the run), publish the final state.

    Returns the outcome, or None when the run ended before its stats segment existed.
    """
    run.executor.shutdown(graceful=end.state == "done")
    if run.store is not None:
        run.store.close()  # a reader waiting for a slot stops
    if run.source is not None:
        run.source.close()
    if run.checkpoints is not None and sink is not None and run.seg is not None:
        try:
            run.save_checkpoint(sink)  # at exit, whatever ended the run: what is in the output
        except Stop as stop:
            end.fail(stop.code, stop.message, stop.state)
    failed = sink.close() if sink is not None else None  # cuts what was written past the committed end
    if failed is not None:
        end.fail(EXIT_FAILED, f"I/O error: {failed}")
    end.fail(EXIT_FAILED, run.collector.close_traces())
    outcome = None
    if run.seg is not None:
        try:
            outcome = _publish_final(run, run.seg, end, report)
        finally:
            run.seg.close()
    if run.dash_proc is not None:
        run.dash_proc.stop()  # if it never got the run, nothing above stopped it
    return outcome


def _publish_final(run: RunParts, seg: StatsSegment, end: Ending, report: bool) -> RunOutcome:
    """The last alert evaluation, the final counts and state: to the report, the dashboard, --save-metrics."""
    if run.alerts is not None:  # a last evaluation; what still fires stays firing (AlertWatch.finish)
        run.alerts.finish(run.live_stats)
        end.fail(EXIT_ALERT, run.alerts.failed)
    c = run.collector
    seg.set_system(
        ended_at_ms=int(time.time() * 1000),
        workers_restarted=run.executor.restarted,
        traces_delivered=c.traces_delivered,
        errors_delivered=c.errors_delivered,
        records_repeated=c.repeats,
        dashboard_dropped=c.forward_dropped,
    )
    seg.set_state(end.state)
    # After shutdown: the workers as last seen, with what they ran.
    final = run.final_stats(executor=run.executor.view())
    saved = dict(final)
    place(saved, Parts(recent_errors=c.recent_errors(SAVED_RECENT), recent_traces=c.recent_traces(SAVED_RECENT)))
    end.explain_max_errors(final["system"])
    outcome = RunOutcome(final, saved, end.code, end.message)
    if run.dashboard is not None:
        run.dashboard.publish_final(final)  # before the report: /stats says "final" once the state is
    if report and run.opts.on_end is not None:  # the report, before a dashboard lingers on
        run.opts.on_end(outcome)
    if run.dashboard is not None:
        run.dashboard.finish(lambda: run.signals.stop is not None)
    return outcome
