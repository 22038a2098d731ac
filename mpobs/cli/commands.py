"""The ``mpobs`` command line: process, validate, dashboard, generate."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mpobs.cli.alerts import alerts
from mpobs.cli.process import fail, internal_error, process
from mpobs.cli.traces import traces
from mpobs.defaults import default_workers
from mpobs.errors import DashboardError, InputError, MpobsError

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


@main.command()
@click.argument("config_path", type=click.Path(path_type=str))
def validate(config_path: str) -> None:
    """Check a pipeline config and print its DAG."""
    from mpobs.pipeline.config import load_config

    try:
        pipeline = load_config(config_path)
    except MpobsError as err:
        fail(err)
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
        fail(InputError(f"cannot write {path!r}: {err.strerror}"))
        return
    click.echo(f"{path}: {lines:,} lines, {n:,} bytes", err=True)


main.add_command(process)
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
        fail(err)
    except Exception as err:  # a bug: one line, not a traceback (MPOBS_DEBUG=1 shows it)
        internal_error(err)


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
    from mpobs.run.coordinator import Coordinator
    from mpobs.run.options import RunOptions, Tracing

    folder = tempfile.mkdtemp(prefix="mpobs-demo-")
    try:
        path = os.path.join(folder, "demo.log")
        say(f"demo: generating a {lines:,}-line log")
        generate_file(path, lines, seed=11, awkward=0.001)
        run = RunOptions(path, os.path.join(folder, "out.log"), workers, tracing=Tracing(0.002), dashboard=opts)
        outcome = Coordinator(load_config(None), run).run()
        s = outcome.stats["system"]
        say(f"demo: {s['state']}, {s['total_lines']:,} lines in {s['elapsed_s']:.2f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
