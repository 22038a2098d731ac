"""``mpobs process``: its options, and the run they make (RunOptions are built here, in one place)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from mpobs.cli.alerts import alert_options, with_alert_options
from mpobs.cli.early import start_resource_tracker
from mpobs.defaults import (
    BATCH_LINES,
    CHECKPOINT_EVERY,
    DASK_TASK_BYTES,
    STALL_AFTER,
    TASK_BYTES,
    TRACE_SAMPLE,
    default_workers,
)
from mpobs.errors import EXIT_FAILED, InputError, MpobsError

if TYPE_CHECKING:
    from dashboard_app.process import DashboardProcess
    from mpobs.executors.dask.executor import DaskExecutor
    from mpobs.pipeline.dag import Pipeline
    from mpobs.run.options import RunOptions, RunOutcome

SAMPLE_LINES = 200_000


def fail(err: MpobsError) -> None:
    """An error for the user: one line on stderr, and its exit code."""
    click.echo(f"mpobs: error: {err}", err=True)
    sys.exit(err.exit_code)


def internal_error(err: BaseException) -> None:
    """A bug: one line, unless MPOBS_DEBUG asks for the traceback."""
    if os.environ.get("MPOBS_DEBUG"):
        raise err
    click.echo(
        f"mpobs: error: internal error: {type(err).__name__}: {err} (MPOBS_DEBUG=1 shows the traceback; "
        "please report it)",
        err=True,
    )
    sys.exit(EXIT_FAILED)


@click.command(
    epilog="Exit codes: 0 done, 1 run failed, 2 bad config/input/option, 3 --max-errors reached, "
    "4 an alert named by --fail-on-alert fired, 130/143 interrupted by SIGINT/SIGTERM."
)
@click.argument("inputs", nargs=-1, type=click.Path(readable=False, allow_dash=True, path_type=str))
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=True, path_type=str),
    help="Pipeline config (JSON). Default: the log-level pipeline.",
)
@click.option(
    "-w", "--workers", type=click.IntRange(1, 1024), default=None, help="Worker processes. Default: the CPU count."
)
@click.option("-o", "--output", type=click.Path(path_type=str), help="Output file. Default: stdout.")
@click.option("--save-metrics", type=click.Path(path_type=str), help="Write the final stats as JSON here.")
@click.option("--trace", is_flag=True, help="Trace sampled lines through the DAG.")
@click.option(
    "--trace-sample",
    type=click.FloatRange(0, 1, min_open=True),
    default=TRACE_SAMPLE,
    show_default=True,
    help="Share of lines traced (by line number, so the same with any worker count). Implies --trace.",
)
@click.option(
    "--save-traces",
    type=click.Path(path_type=str),
    help="Write every traced line as JSON Lines (nothing dropped; workers wait). Implies --trace.",
)
@click.option("--max-errors", type=click.IntRange(1), help="Stop (exit 3) after this many processor errors.")
@click.option(
    "-F",
    "--follow",
    is_flag=True,
    help="Follow the last input as it grows and is rotated (tail -F), until SIGINT or SIGTERM (exit 0).",
)
@click.option(
    "--checkpoint",
    "checkpoint",
    type=click.Path(dir_okay=False, path_type=str),
    help="Write commit points here (needs --output FILE); a run that finds one resumes from it.",
)
@click.option(
    "--checkpoint-every",
    type=click.FloatRange(0.05),
    default=CHECKPOINT_EVERY,
    show_default=True,
    help="Seconds between commit points.",
)
@click.option(
    "--stall-after",
    type=click.FloatRange(0, min_open=True),
    default=STALL_AFTER,
    show_default=True,
    help="Seconds a processor's call may run before it is reported as stalled (stderr, /healthz, /metrics).",
)
@click.option(
    "--call-timeout",
    type=click.FloatRange(0, min_open=True),
    metavar="S",
    help="Stop a python processor's call that runs longer (its worker is replaced): an error of that line.",
)
@click.option(
    "--task-size", type=click.IntRange(1024), default=TASK_BYTES, show_default=True, hidden=True, help="Bytes per task."
)
@click.option("--batch-lines", type=click.IntRange(1), default=BATCH_LINES, show_default=True, hidden=True)
@click.option(
    "--executor",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="Where tasks run: local worker processes, or a Dask distributed cluster (pip install 'mpobs[dask]').",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="A running Dask scheduler (tcp://host:8786) to run on; implies --executor dask. Default with "
    "--executor dask: $MPOBS_DASK_SCHEDULER, else a LocalCluster of --workers processes.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress line and no summary on stderr.")
@click.option("--dashboard", is_flag=True, help="Serve the live dashboard while running.")
@click.option(
    "--dashboard-host",
    default="127.0.0.1",
    show_default=True,
    help="Address to serve on; a non-loopback one needs a token.",
)
@click.option(
    "--dashboard-port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to serve on (0: any free port, printed).",
)
@click.option("--dashboard-token", envvar="MPOBS_DASHBOARD_TOKEN", help="Bearer token the dashboard requires.")
@click.option(
    "--linger",
    type=click.FloatRange(0),
    default=None,
    help="Keep the dashboard up this many seconds after the run (default: until Ctrl-C; 0: exit).",
)
@with_alert_options
def process(
    inputs: tuple[str, ...],
    config_path: str | None,
    workers: int | None,
    output: str | None,
    save_metrics: str | None,
    trace: bool,
    trace_sample: float,
    save_traces: str | None,
    max_errors: int | None,
    follow: bool,
    checkpoint: str | None,
    checkpoint_every: float,
    stall_after: float,
    call_timeout: float | None,
    task_size: int,
    batch_lines: int,
    executor: str,
    scheduler: str | None,
    quiet: bool,
    dashboard: bool,
    dashboard_host: str,
    dashboard_port: int,
    dashboard_token: str | None,
    linger: float | None,
    alert_files: tuple[str, ...],
    alerts_interval: float,
    alertmanager: str | None,
    fail_on_alert: tuple[str, ...],
) -> None:
    """Run the pipeline over INPUTS, one stream in the order given (default: a generated sample log).

    An input is a file (plain, or gzip, bzip2, xz or zstd compressed: told by its first
    bytes), "-" for standard input, or a FIFO, a pipe or a device.
    """
    try:
        start_resource_tracker()  # at once, if ``mpobs process`` (mpobs.__main__) has not yet
    except KeyboardInterrupt:
        click.echo("mpobs: interrupted", err=True)
        sys.exit(130)
    given = _given_options(dashboard)
    sample_dir = None
    dash = dash_proc = None
    code: int | None = None
    try:
        if dashboard:
            from dashboard_app.process import DashboardOptions, prestart

            dash = DashboardOptions.checked(dashboard_host, dashboard_port, dashboard_token, linger)
            dash_proc = prestart(dash)  # before the imports below: its own then run while this process does them
        from mpobs.pipeline.config import load_config
        from mpobs.run.options import Checkpointing, RunOptions, Tracing

        pipeline = load_config(config_path)
        alerting = alert_options(
            pipeline,
            alert_files,
            alerts_interval,
            alertmanager,
            fail_on_alert,
            given,
            dash_proc.url if dash_proc is not None else "",
        )
        if not inputs:
            sample_dir, inputs, output = _sample(output)
        runner = _executor(executor, scheduler, workers or default_workers(), call_timeout)
        if runner is not None and "task_size" not in given:
            task_size = _dask_task_bytes(inputs, runner.capacity)
        tracing = trace or "trace_sample" in given or bool(save_traces)  # asking for either is asking
        opts = RunOptions(
            list(inputs),
            output,
            workers or default_workers(),
            task_bytes=task_size,
            batch_lines=batch_lines,
            tracing=Tracing(trace_sample, save_traces) if tracing else None,
            save_metrics=save_metrics,
            max_errors=max_errors,
            checkpoint=Checkpointing(checkpoint, checkpoint_every) if checkpoint is not None else None,
            follow=follow,
            stall_after=stall_after,
            call_timeout=call_timeout,
            dashboard=dash,
            dashboard_process=dash_proc,
            alerts=alerting,
        )
        code = _run(pipeline, opts, runner, quiet)
    except MpobsError as err:
        fail(err)
    except KeyboardInterrupt:  # before the run took over the signals (e.g. while writing the sample)
        click.echo("mpobs: interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # a bug: say so in one line; MPOBS_DEBUG=1 shows the traceback
        internal_error(err)
    finally:
        _clean_up(dash_proc, sample_dir)
    if code is not None:
        from mpobs.cli.report import exit_now

        exit_now(code)


def _clean_up(dash_proc: DashboardProcess | None, sample_dir: str | None) -> None:
    if dash_proc is not None:
        dash_proc.stop()  # if the run never started (a bad config, say); a no-op after a run
    if sample_dir:
        import shutil

        shutil.rmtree(sample_dir, ignore_errors=True)


def _sample(output: str | None) -> tuple[str, tuple[str, ...], str | None]:
    """No input given: a generated sample log in a temp folder (the caller removes it); its results to a file
    when they would go to a terminal (180,000 lines would scroll past the summary)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="mpobs-sample-")
    inputs = (_make_sample(folder),)
    if output is None and sys.stdout.isatty():
        output = "mpobs-sample-output.txt"
        click.echo(f"mpobs: results go to {output} (give --output to choose)", err=True)
    return folder, inputs, output


def _run(pipeline: Pipeline, opts: RunOptions, runner: DaskExecutor | None, quiet: bool) -> int:
    """The run, with the progress line; then the saved metrics and the summary; returns its exit code."""
    from mpobs.cli.report import Progress, report, summary
    from mpobs.run.coordinator import Coordinator

    progress = Progress(enabled=False if quiet else None)
    codes: list[int] = []

    def ended(outcome: RunOutcome) -> None:
        """The run is over: the report now, while a dashboard may go on serving the final state."""
        progress.close()
        codes.append(report(outcome, opts.save_metrics, None if quiet else summary))

    opts.on_tick, opts.on_end = progress.tick, ended
    try:
        Coordinator(pipeline, opts, executor=runner).run()  # a run that returns has called ``ended``
    finally:
        progress.close()
        if runner is not None:
            runner.close()  # a run that could not start did not shut it down
    return codes[0]


def _executor(name: str, scheduler: str | None, workers: int, call_timeout: float | None) -> DaskExecutor | None:
    """The Dask executor, connected (exit 2 if it cannot be), or None for the local pool."""
    if name == "local" and scheduler is None:
        return None
    if call_timeout is not None:
        raise InputError("--call-timeout needs the local executor: a Dask worker's call cannot be stopped alone")
    from mpobs.executors.dask.executor import SCHEDULER_ENV, DaskExecutor

    runner = DaskExecutor(workers, scheduler or os.environ.get(SCHEDULER_ENV) or None)
    runner.connect()
    return runner


def _dask_task_bytes(inputs: tuple[str, ...], threads: int) -> int:
    """Big tasks for Dask (DASK_TASK_BYTES), but at least 4 per worker thread for the files given, down to 1 MiB."""
    total = 0
    for name in inputs:
        try:
            total += os.stat(name).st_size if name != "-" else DASK_TASK_BYTES * threads * 4
        except OSError:
            pass  # the run says what is wrong with it
    return max(TASK_BYTES, min(DASK_TASK_BYTES, total // (4 * max(1, threads))))


def _given_options(dashboard: bool) -> set[str]:
    """The options given on the command line; warns about dashboard options without --dashboard."""
    ctx = click.get_current_context()
    given = {name for name in ctx.params if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT}
    ignored = sorted(given & {"dashboard_host", "dashboard_port", "dashboard_token", "linger"})
    if ignored and not dashboard:
        names = ", ".join("--" + n.replace("_", "-") for n in ignored)
        click.echo(f"mpobs: warning: {names} without --dashboard does nothing", err=True)
    return given


def _make_sample(folder: str) -> str:
    from mpobs.inputs.loggen import generate_file

    path = os.path.join(folder, "sample.log")
    generate_file(path, SAMPLE_LINES, seed=7, awkward=0.001)
    click.echo(f"mpobs: no input given; running on a generated sample log ({SAMPLE_LINES:,} lines)", err=True)
    return path
