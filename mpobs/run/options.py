"""What a run is told (``RunOptions``), what it ends with (``RunOutcome``), and the checks before it starts."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from mpobs.defaults import (
    BATCH_LINES,
    CHECKPOINT_EVERY,
    EVENT_CHUNK,
    STALL_AFTER,
    TASK_BYTES,
    TRACE_SAMPLE,
    default_workers,
)
from mpobs.errors import InputError
from mpobs.executors.parts import remove_leftover_parts
from mpobs.inputs.inputset import InputSet
from mpobs.lifeline import pid_alive
from mpobs.metrics.segment import remove_leftover_segments
from mpobs.output.joiner import check_writable


class RunOptions:
    """Everything ``mpobs process`` can be told (a plain class: see mpobs.executors.task.TaskSettings)."""

    def __init__(
        self,
        inputs: str | Sequence[str],  # names as given ("-": standard input); one, or many read as one stream
        output_path: str | None = None,
        workers: int | None = None,  # default: the CPU count
        task_bytes: int = TASK_BYTES,
        batch_lines: int = BATCH_LINES,
        trace: bool = False,
        trace_sample: float = TRACE_SAMPLE,
        save_traces: str | None = None,
        save_metrics: str | None = None,  # checked with the other outputs; written by the caller (RunOutcome.metrics)
        max_errors: int | None = None,
        checkpoint: str | None = None,  # commit points written here; a run finding one resumes from it
        checkpoint_every: float = CHECKPOINT_EVERY,
        follow: bool = False,  # the last input is followed (tail -F) until SIGINT or SIGTERM
        stall_after: float = STALL_AFTER,  # a call running longer is reported (stderr, /healthz, /metrics)
        call_timeout: float | None = None,  # a python processor's call running longer is stopped: an error of its line
        event_chunk: int = EVENT_CHUNK,  # records per queue message
        dashboard: Any = None,  # dashboard_app.process.DashboardOptions
        dashboard_process: Any = None,  # dashboard_app.process.DashboardProcess, forked early (prestart)
        alerts: Any = None,  # mpobs.alerts.watch.AlertOptions: rules evaluated during the run (--alerts)
        on_tick: Callable[[Any], None] | None = None,  # progress display, given the Coordinator
        on_end: Callable[[RunOutcome], None] | None = None,  # the run is over (before the dashboard lingers)
    ) -> None:
        self.inputs, self.output_path = inputs, output_path
        self.workers = workers if workers is not None else default_workers()
        self.task_bytes, self.batch_lines = task_bytes, batch_lines
        self.trace, self.trace_sample, self.save_traces = trace, trace_sample, save_traces
        self.save_metrics, self.max_errors = save_metrics, max_errors
        self.checkpoint, self.checkpoint_every, self.follow = checkpoint, checkpoint_every, follow
        self.stall_after, self.call_timeout, self.event_chunk = stall_after, call_timeout, event_chunk
        self.dashboard, self.dashboard_process, self.alerts = dashboard, dashboard_process, alerts
        self.on_tick, self.on_end = on_tick, on_end


class RunOutcome:
    """How a run ended: ``stats``, the final stats document; ``metrics``, the same with recent
    errors and traces (what --save-metrics writes); its exit code, and a message for stderr."""

    __slots__ = ("exit_code", "message", "metrics", "stats")

    def __init__(self, stats: dict[str, Any], metrics: dict[str, Any], exit_code: int, message: str | None) -> None:
        self.stats, self.metrics, self.exit_code, self.message = stats, metrics, exit_code, message


def check_outputs(source: InputSet, opts: RunOptions) -> None:
    """Every output path is usable and none is the input, before any work."""
    if opts.output_path is not None:
        check_writable(opts.output_path, "output", source.is_file)
    if opts.save_traces:
        check_writable(opts.save_traces, "--save-traces file", source.is_file)
    if opts.save_metrics:
        check_writable(opts.save_metrics, "--save-metrics file", source.is_file)
    if opts.checkpoint:
        check_writable(opts.checkpoint, "--checkpoint file", source.is_file)
        others = {
            "output": opts.output_path,
            "--save-metrics file": opts.save_metrics,
            "--save-traces file": opts.save_traces,
        }
        for what, path in others.items():
            if path is not None and os.path.abspath(path) == os.path.abspath(opts.checkpoint):
                raise InputError(f"--checkpoint file {opts.checkpoint!r} is also the {what}; give it a path of its own")


def remove_leftovers() -> None:
    """Remove what runs killed outright (SIGKILL) left: segments and part folders of dead pids.

    Normally a run removes both, and after a lone SIGKILL the resource tracker still
    unlinks the segment; a whole process group killed at once leaves them, and the
    next run clears them.
    """
    remove_leftover_segments(pid_alive)
    remove_leftover_parts(pid_alive)
