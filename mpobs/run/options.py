"""What a run is told (``RunOptions``), what it ends with (``RunOutcome``), and the checks before it starts."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from dashboard_app.process import DashboardOptions, DashboardProcess
    from mpobs.alerts.watch import AlertOptions


class Tracing:
    """``--trace``: which lines are traced (a share, by line number) and where every trace is saved."""

    __slots__ = ("sample", "save")

    def __init__(self, sample: float = TRACE_SAMPLE, save: str | None = None) -> None:
        self.sample = sample
        self.save = save  # --save-traces: every traced line, nothing dropped (workers wait for the file)


class Checkpointing:
    """``--checkpoint``: commit points written to ``path`` every ``every`` seconds; a run finding one resumes."""

    __slots__ = ("every", "path")

    def __init__(self, path: str, every: float = CHECKPOINT_EVERY) -> None:
        self.path, self.every = path, every


class RunOptions:
    """Everything ``mpobs process`` can be told, in groups; the CLI builds it in one place (mpobs.cli.process).

    A plain class (see mpobs.executors.task.TaskSettings): it is made at every run's start.
    The optional parts are None when not asked for: ``tracing``, ``checkpoint``,
    ``dashboard`` (and the process the CLI forked for it early), ``alerts``.
    """

    def __init__(
        self,
        inputs: str | Sequence[str],  # names as given ("-": standard input); one, or many read as one stream
        output_path: str | None = None,
        workers: int | None = None,  # default: the CPU count
        *,
        task_bytes: int = TASK_BYTES,
        batch_lines: int = BATCH_LINES,
        event_chunk: int = EVENT_CHUNK,  # records per queue message
        follow: bool = False,  # the last input is followed (tail -F) until SIGINT or SIGTERM
        tracing: Tracing | None = None,
        checkpoint: Checkpointing | None = None,
        save_metrics: str | None = None,  # checked with the other outputs; written by the caller (RunOutcome.metrics)
        max_errors: int | None = None,
        stall_after: float = STALL_AFTER,  # a call running longer is reported (stderr, /healthz, /metrics)
        call_timeout: float | None = None,  # a python processor's call running longer is stopped: an error of its line
        dashboard: DashboardOptions | None = None,
        dashboard_process: DashboardProcess | None = None,  # forked early by the CLI (prestart)
        alerts: AlertOptions | None = None,  # rules evaluated during the run (--alerts)
        on_tick: Callable[[Callable[[], dict[str, Any]]], None] | None = None,  # progress: given live_stats
        on_end: Callable[[RunOutcome], None] | None = None,  # the run is over (before the dashboard lingers)
    ) -> None:
        self.inputs, self.output_path = inputs, output_path
        self.workers = workers if workers is not None else default_workers()
        self.task_bytes, self.batch_lines, self.event_chunk, self.follow = task_bytes, batch_lines, event_chunk, follow
        self.tracing, self.checkpoint, self.save_metrics = tracing, checkpoint, save_metrics
        self.max_errors, self.stall_after, self.call_timeout = max_errors, stall_after, call_timeout
        self.dashboard, self.dashboard_process, self.alerts = dashboard, dashboard_process, alerts
        self.on_tick, self.on_end = on_tick, on_end

    @property
    def trace_rate(self) -> float:
        """The share of lines traced: 0.0 without --trace."""
        return self.tracing.sample if self.tracing is not None else 0.0

    @property
    def save_traces(self) -> str | None:
        return self.tracing.save if self.tracing is not None else None


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
    if opts.checkpoint is not None:
        ckpt = opts.checkpoint.path
        check_writable(ckpt, "--checkpoint file", source.is_file)
        others = {
            "output": opts.output_path,
            "--save-metrics file": opts.save_metrics,
            "--save-traces file": opts.save_traces,
        }
        for what, path in others.items():
            if path is not None and os.path.abspath(path) == os.path.abspath(ckpt):
                raise InputError(f"--checkpoint file {ckpt!r} is also the {what}; give it a path of its own")


def remove_leftovers() -> None:
    """Remove what runs killed outright (SIGKILL) left: segments and part folders of dead pids.

    Normally a run removes both, and after a lone SIGKILL the resource tracker still
    unlinks the segment; a whole process group killed at once leaves them, and the
    next run clears them.
    """
    remove_leftover_segments(pid_alive)
    remove_leftover_parts(pid_alive)
