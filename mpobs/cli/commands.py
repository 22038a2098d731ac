"""The ``mpobs`` command line: process, validate, dashboard, generate."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from click.core import ParameterSource

from mpobs.cli.alerts import alert_options, alerts, with_alert_options
from mpobs.cli.early import start_resource_tracker
from mpobs.cli.traces import traces
from mpobs.defaults import (
    BATCH_LINES,
    CHECKPOINT_EVERY,
    DASK_TASK_BYTES,
    STALL_AFTER,
    TASK_BYTES,
    TRACE_SAMPLE,
    default_workers,
)
from mpobs.errors import EXIT_FAILED, DashboardError, InputError, MpobsError

SAMPLE_LINES = 200_000


def _fail(err: MpobsError) -> None:
    click.echo(f"mpobs: error: {err}", err=True)
    sys.exit(err.exit_code)


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class _Commands(click.Group):
    """The ``mpobs`` group: click's usage errors as one ``mpobs: error: ...`` line, as every other error.

    click prints a usage block, a hint and the error on three lines; its "Did you mean"
    suggestion is part of the message and stays.
    """

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as err:  # bare ``mpobs``: the help, as click shows it
            err.show()
            sys.exit(err.exit_code)
        except click.ClickException as err:
            message = err.format_message()
            if isinstance(err, click.UsageError) and err.ctx is not None:
                message = f"{message[:1].lower()}{message[1:]} (see {err.ctx.command_path} --help)"
            click.echo(f"mpobs: error: {message}", err=True)
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("mpobs: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpobs")
def main() -> None:
    """mpobs: run a DAG of line processors over a log on every core, and watch every step."""
    _one_blas_thread()


#: Thread pools of the BLAS libraries numpy may be built with (OpenBLAS, MKL, OpenMP).
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def _one_blas_thread() -> None:
    """One BLAS thread per process, unless the user set a number (before numpy is imported).

    Each worker process already has a core to itself, so BLAS thread pools in user
    functions would only oversubscribe the cores (Dask's workers do the same), and
    mpobs itself does no linear algebra. OpenBLAS's pool also spins on a core after
    ``import numpy`` until the first fork: 25-55 ms of CPU per run, measured here.
    """
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")


@main.command(
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
    trace = trace or "trace_sample" in given  # asking for a sample rate is asking for tracing
    sample_dir = None
    dash_proc = None
    code: int | None = None
    try:
        dash = None
        if dashboard:
            from dashboard_app.process import DashboardOptions, prestart

            dash = DashboardOptions.checked(dashboard_host, dashboard_port, dashboard_token, linger)
            # Before the imports below: its own imports then run while this process does them.
            dash_proc = prestart(dash)
        from mpobs.pipeline.config import load_config
        from mpobs.run.coordinator import RunOptions

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
            import tempfile

            sample_dir = tempfile.mkdtemp(prefix="mpobs-sample-")
            inputs = (_make_sample(sample_dir),)
            if output is None and sys.stdout.isatty():
                # 180,000 result lines would scroll past the summary: keep them in a file.
                output = "mpobs-sample-output.txt"
                click.echo(f"mpobs: results go to {output} (give --output to choose)", err=True)
        if call_timeout is not None and (executor != "local" or scheduler is not None):
            raise InputError("--call-timeout needs the local executor: a Dask worker's call cannot be stopped alone")
        runner = _executor(executor, scheduler, workers or default_workers())
        if runner is not None and "task_size" not in given:
            task_size = _dask_task_bytes(inputs, runner.capacity)
        opts = RunOptions(
            list(inputs),
            output,
            workers or default_workers(),
            task_size,
            batch_lines,
            trace=trace or bool(save_traces),
            trace_sample=trace_sample,
            save_traces=save_traces,
            save_metrics=save_metrics,
            max_errors=max_errors,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            follow=follow,
            stall_after=stall_after,
            call_timeout=call_timeout,
            dashboard=dash,
            dashboard_process=dash_proc,
            alerts=alerting,
        )
        code = _run(pipeline, opts, runner, quiet)
    except MpobsError as err:
        _fail(err)
    except KeyboardInterrupt:  # before the run took over the signals (e.g. while writing the sample)
        click.echo("mpobs: interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # a bug: say so in one line; MPOBS_DEBUG=1 shows the traceback
        _internal_error(err)
    finally:
        if dash_proc is not None:
            dash_proc.stop()  # if the run never started (a bad config, say); a no-op after a run
        if sample_dir:
            import shutil

            shutil.rmtree(sample_dir, ignore_errors=True)
    if code is not None:
        from mpobs.cli.report import exit_now

        exit_now(code)


def _run(pipeline: Any, opts: Any, runner: Any, quiet: bool) -> int:
    """The run, with the progress line; then the saved metrics and the summary; returns its exit code."""
    from mpobs.cli.report import Progress, report, summary
    from mpobs.run.coordinator import Coordinator

    progress = Progress(enabled=False if quiet else None)
    codes: list[int] = []

    def ended(outcome: Any) -> None:
        """The run is over: the report now, while a dashboard may go on serving the final state."""
        progress.close()
        codes.append(report(outcome, opts.save_metrics, None if quiet else summary))

    opts.on_tick, opts.on_end = progress.tick, ended
    try:
        outcome = Coordinator(pipeline, opts, executor=runner).run()
    finally:
        progress.close()
        if runner is not None:
            runner.close()  # a run that could not start did not shut it down
    return codes[0] if codes else report(outcome, opts.save_metrics, None if quiet else summary)


def _executor(name: str, scheduler: str | None, workers: int) -> Any:
    """The Dask executor, connected (exit 2 if it cannot be), or None for the local pool."""
    if name == "local" and scheduler is None:
        return None
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


def _internal_error(err: BaseException) -> None:
    if os.environ.get("MPOBS_DEBUG"):
        raise err
    click.echo(
        f"mpobs: error: internal error: {type(err).__name__}: {err} (MPOBS_DEBUG=1 shows the traceback; "
        "please report it)",
        err=True,
    )
    sys.exit(EXIT_FAILED)


def _make_sample(folder: str) -> str:
    from mpobs.inputs.loggen import generate_file

    path = os.path.join(folder, "sample.log")
    generate_file(path, SAMPLE_LINES, seed=7, awkward=0.001)
    click.echo(f"mpobs: no input given; running on a generated sample log ({SAMPLE_LINES:,} lines)", err=True)
    return path


@main.command()
@click.argument("config_path", type=click.Path(path_type=str))
def validate(config_path: str) -> None:
    """Check a pipeline config and print its DAG."""
    from mpobs.pipeline.config import load_config

    try:
        pipeline = load_config(config_path)
    except MpobsError as err:
        _fail(err)
        return
    click.echo(f"{config_path}: valid, {len(pipeline.nodes)} processors")
    click.echo(pipeline.describe())


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--lines", type=click.IntRange(0), default=100_000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--awkward", type=click.FloatRange(0, 1), default=0.0, help="Share of awkward lines.")
@click.option("--mix", default="INFO=70,WARN=12,ERROR=5,DEBUG=10,WARNING=3", show_default=True, help="Level weights.")
def generate(path: str, lines: int, seed: int, awkward: float, mix: str) -> None:
    """Write a generated log file (for trying mpobs and for benchmarks)."""
    from mpobs.inputs.loggen import generate_file, parse_mix

    try:
        weights = parse_mix(mix)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--mix") from None
    try:
        n = generate_file(path, lines, seed=seed, awkward=awkward, mix=weights)
    except OSError as err:
        _fail(InputError(f"cannot write {path!r}: {err.strerror}"))
        return
    click.echo(f"{path}: {lines:,} lines, {n:,} bytes", err=True)


main.add_command(alerts)
main.add_command(traces)


@main.command("dashboard")
@click.option(
    "--metrics",
    "metrics_path",
    type=click.Path(dir_okay=False, path_type=str),
    help="Serve a saved run (the JSON that --save-metrics writes). Default: run a demo.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token", envvar="MPOBS_DASHBOARD_TOKEN", help="Bearer token the dashboard requires.")
@click.option(
    "--lines", type=click.IntRange(1000), default=3_000_000, show_default=True, help="Demo: lines of the generated log."
)
@click.option("--workers", type=click.IntRange(1, 1024), default=None, help="Demo: worker processes.")
def dashboard_command(
    metrics_path: str | None, host: str, port: int, token: str | None, lines: int, workers: int | None
) -> None:
    """Serve the dashboard for a saved run, or (no --metrics) watch a demo run on a generated log."""
    from dashboard_app.process import DashboardOptions

    try:
        opts = DashboardOptions.checked(host, port, token, None)
        if metrics_path:
            _serve_saved(metrics_path, opts)
        else:
            _demo(opts, lines, workers or default_workers())
    except MpobsError as err:
        _fail(err)
    except Exception as err:  # a bug: one line, not a traceback (MPOBS_DEBUG=1 shows it)
        _internal_error(err)


def _serve_saved(path: str, opts: Any) -> None:
    import signal

    from dashboard_app.process import bind_socket, say, serve, url_of
    from dashboard_app.sources import SavedSource

    try:
        source = SavedSource.load(path)
    except ValueError as err:
        raise DashboardError(str(err)) from err
    sock = bind_socket(opts.host, opts.port)
    # Ctrl-C ends the process at once: a saved run has nothing to flush, and a KeyboardInterrupt
    # that lands inside waitress (a request in flight, its thread pool) could leave it hanging.
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    say(f"dashboard for {path} at {url_of(sock, opts.host)}; press Ctrl-C to stop")
    serve(source, sock, opts)


def _demo(opts: Any, lines: int, workers: int) -> None:
    import shutil
    import tempfile

    from dashboard_app.process import say
    from mpobs.inputs.loggen import generate_file
    from mpobs.pipeline.config import load_config
    from mpobs.run.coordinator import Coordinator, RunOptions

    folder = tempfile.mkdtemp(prefix="mpobs-demo-")
    try:
        path = os.path.join(folder, "demo.log")
        say(f"demo: generating a {lines:,}-line log")
        generate_file(path, lines, seed=11, awkward=0.001)
        run = RunOptions(path, os.path.join(folder, "out.log"), workers, trace=True, trace_sample=0.002, dashboard=opts)
        outcome = Coordinator(load_config(None), run).run()
        s = outcome.stats["system"]
        say(f"demo: {s['state']}, {s['total_lines']:,} lines in {s['elapsed_s']:.2f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
