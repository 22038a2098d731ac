"""Run a pipeline in this process over a few lines, and get what it gave: for tests of what a pipeline means.

Modelled on ``bytewax.testing``: a test gives a config and some lines, and reads the output lines,
the counts, the tags, the counter keys, the errors and the traces::

    from mpobs.testing import run_pipeline

    result = run_pipeline({"processors": [{"type": "uppercase", "id": "up"}]}, ["a", "b"], workers=2)
    assert result.lines == ["A", "B"]
    assert result.counts["up"]["lines_out"] == 2

It runs the real coordinator, scheduler, ordered output, stats segment and records with the test
executor (``mpobs.executors.testing``): tasks run in this process, ``workers`` of them at a time and
finished in a random order (with ``lose``, some are lost and run again), so an answer that depends
on either is found out. Tasks and batches are small by default, so that even a few lines make
several of each. No process is started; the input and output live in a temporary folder removed
afterwards, and the stats segment is unlinked as after any run. Call it from the main thread (a run
installs its signal handlers).

User functions (``python`` processors) are found as the command line finds them: next to a config
given as a path, or anywhere importable (``"tests.test_x:f"``); ``functions`` writes modules for one
run (name -> source). Modules imported from a run's folders are forgotten after it, so the next run
with a module of the same name gets its own.

What needs the command line or real worker processes is not here: follow mode, the dashboard,
alerts, checkpoints, --call-timeout, workers that die.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpobs.defaults import TRACE_SAMPLE
from mpobs.errors import MpobsError
from mpobs.executors.base import Executor
from mpobs.executors.testing import AdversarialExecutor
from mpobs.pipeline.config import compile_config, load_config
from mpobs.pipeline.dag import Pipeline
from mpobs.run.coordinator import Coordinator
from mpobs.run.options import RunOptions, Tracing
from mpobs.tracing.records import EventCollector

#: A config: its parsed JSON (a dict), or the path of its file.
Config = Mapping[str, Any] | str | os.PathLike[str]
#: An input: lines (each str or bytes, a newline added to each), raw bytes or text (as they are),
#: or the paths of files to read one after the other.
Data = bytes | str | Sequence[str | bytes] | os.PathLike[str] | Sequence[os.PathLike[str]]

#: Per-processor counts that are exact whatever ran the tasks (no times).
COUNT_FIELDS = ("lines_in", "lines_out", "errors", "batches")


@dataclass(frozen=True)
class PipelineResult:
    """What a run gave.

    ``lines``: the output, line by line (decoded as mpobs decodes, undecodable bytes kept as
    surrogates); ``output``: its bytes. ``stats``: the final stats document (what --save-metrics
    writes). ``counts``: per processor id, its COUNT_FIELDS. ``tags``: lines per tag; ``counters``: per
    counter id, its keys. ``errors``: every error record, in line order. ``traces``: every trace
    delivered, in line order, without the steps' timestamps (each task keeps the last 1,000 of its
    traced lines, as in any run; with ``save_traces`` they come from the --save-traces file: all).
    ``exit_code`` and ``message``: how the run ended, as the command line would say it.
    """

    lines: list[str]
    output: bytes
    stats: dict[str, Any]
    counts: dict[str, dict[str, int]]
    tags: dict[str, int]
    counters: dict[str, dict[str, int]]
    errors: list[dict[str, Any]]
    traces: list[dict[str, Any]]
    exit_code: int
    message: str | None


class RunFailed(MpobsError):
    """The run ended with another exit code than 0 (``run_pipeline(check=True)``); ``result`` is what it gave."""

    def __init__(self, result: PipelineResult) -> None:
        super().__init__(f"the run ended with exit code {result.exit_code}: {result.message}")
        self.result = result


def run_pipeline(
    config: Config,
    data: Data,
    *,
    workers: int = 1,
    task_bytes: int = 1024,
    batch_lines: int = 7,
    trace: bool | float = False,
    save_traces: bool = False,
    max_errors: int | None = None,
    functions: Mapping[str, str] | None = None,
    lose: float = 0.0,
    seed: int = 0,
    executor: Executor | None = None,
    check: bool = True,
) -> PipelineResult:
    """Run ``config`` over ``data`` in this process with the test executor; see the module docstring.

    ``workers``: tasks run at once. ``trace``: True traces at the default rate, a number at that rate.
    ``save_traces``: the run writes a --save-traces file, and ``traces`` are read from it (it implies
    ``trace``, as --save-traces does).
    ``functions``: modules for the run's python processors, name -> source. ``lose``: the chance
    that a task's run is lost (``seed`` seeds the executor's choices). ``executor``: another
    executor than the test executor. ``check``: raise RunFailed unless the run ends with exit
    code 0. A config or an input the command line refuses raises what it raises there (MpobsError).
    """
    folder = Path(tempfile.mkdtemp(prefix="mpobs-testing-"))
    try:
        given = _inputs(folder, data)
        # A made input is read from inside the run's folder: records and stats name it "in.log", as
        # `mpobs process in.log` does.
        inputs, workdir = (given, None) if given is not None else (["in.log"], folder)
        if not isinstance(config, Mapping):
            config = os.path.abspath(config)
        fn_folder = None
        if functions:
            fn_folder = folder / "functions"
            fn_folder.mkdir()
            for name, source in functions.items():
                (fn_folder / f"{name}.py").write_text(source, encoding="utf-8")
        config_dir = None if isinstance(config, Mapping) else os.path.dirname(os.path.realpath(config))
        folders = [str(d) for d in (fn_folder, config_dir) if d is not None]
        if executor is None:
            executor = AdversarialExecutor(capacity=workers, seed=seed, lose=lose)
        trace = trace or save_traces  # as on the command line: saving traces is asking for them
        rate = (TRACE_SAMPLE if trace is True else float(trace)) if trace else 0.0
        out, saved = folder / "out", folder / "traces.jsonl" if save_traces else None
        opts = _options(inputs, out, executor.capacity, task_bytes, batch_lines, rate, saved, max_errors)
        collector = EventCollector(keep=sys.maxsize)
        with _user_modules(folders, _function_modules(config)), _inside(workdir):
            outcome = Coordinator(_pipeline(config), opts, collector=collector, executor=executor).run()
        return _result(outcome.metrics, outcome.exit_code, outcome.message, out, collector, saved, check)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _options(
    inputs: list[str],
    out: Path,
    workers: int,
    task_bytes: int,
    batch_lines: int,
    rate: float,
    saved: Path | None,
    max_errors: int | None,
) -> RunOptions:
    """The run's options: the one place the harness builds them."""
    return RunOptions(
        inputs,
        str(out),
        workers=workers,
        task_bytes=task_bytes,
        batch_lines=batch_lines,
        tracing=Tracing(rate, str(saved) if saved is not None else None) if rate > 0 else None,
        max_errors=max_errors,
    )


def _inputs(folder: Path, data: Data) -> list[str] | None:
    """The paths of ``data``'s own files; or None: it is written to in.log in ``folder``."""
    if isinstance(data, os.PathLike):
        return [os.fspath(data)]
    if isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
    elif isinstance(data, str):
        raw = data.encode("utf-8", "surrogateescape")
    else:
        items = list(data)
        paths = [os.fspath(x) for x in items if isinstance(x, os.PathLike)]
        if items and len(paths) == len(items):
            return [p if isinstance(p, str) else os.fsdecode(p) for p in paths]
        raw = b"".join(
            (x if isinstance(x, bytes) else str(x).encode("utf-8", "surrogateescape")) + b"\n" for x in items
        )
    (folder / "in.log").write_bytes(raw)
    return None


def _pipeline(config: Config) -> Pipeline:
    if isinstance(config, Mapping):
        return compile_config(dict(config), source="test config")
    return load_config(config)


def _function_modules(config: Config) -> set[str]:
    """The top-level modules the config's python processors name."""
    data: Any = config
    if not isinstance(config, Mapping):
        try:
            data = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return set()  # the run says what is wrong with it
    procs = data.get("processors") if isinstance(data, Mapping) else None
    refs = [p.get("function") for p in procs if isinstance(p, Mapping)] if isinstance(procs, list) else []
    return {ref.partition(":")[0].partition(".")[0] for ref in refs if isinstance(ref, str)}


@contextmanager
def _inside(folder: Path | None) -> Iterator[None]:
    """The run's working folder is ``folder`` (if not None), as for a command run there."""
    if folder is None:
        yield
        return
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def _user_modules(folders: list[str], names: set[str]) -> Iterator[None]:
    """User modules in ``folders`` for one run: a module of the same name imported before (from another
    test's folder) is not taken for them, and those imported from ``folders`` are forgotten after."""
    path_before, modules_before = list(sys.path), set(sys.modules)
    for name in names:
        if any(os.path.exists(os.path.join(d, name + ".py")) or os.path.isdir(os.path.join(d, name)) for d in folders):
            sys.modules.pop(name, None)
    sys.path[:0] = [d for d in folders if d not in sys.path]
    try:
        yield
    finally:
        sys.path[:] = path_before  # the config's folder, which compiling it put first, too
        roots = [os.path.join(os.path.realpath(d), "") for d in folders]
        for name, module in list(sys.modules.items()):
            if name in modules_before and name.partition(".")[0] not in names:
                continue  # not the run's: say, the tests' own modules, when a config lies among them
            where = getattr(module, "__file__", None)
            if where and any(os.path.realpath(where).startswith(r) for r in roots):
                del sys.modules[name]


def _result(
    stats: dict[str, Any],
    exit_code: int,
    message: str | None,
    out: Path,
    collector: EventCollector,
    saved: Path | None,
    check: bool,
) -> PipelineResult:
    output = out.read_bytes() if out.exists() else b""
    lines = output.decode("utf-8", "surrogateescape").split("\n")
    if lines[-1] == "":
        lines.pop()
    order = {pid: i for i, pid in enumerate(stats["processors"])}
    errors = sorted(
        collector.recent_errors(len(collector.errors)), key=lambda e: (e["line_number"], order[e["processor"]])
    )
    if saved is not None:
        from mpobs.tracing.tracefile import read_traces

        traces = list(read_traces(str(saved)))
    else:
        traces = collector.recent_traces(len(collector.traces))
    for t in traces:
        for step in t["path"]:
            step.pop("timestamp", None)
    result = PipelineResult(
        lines=lines,
        output=output,
        stats=stats,
        counts={pid: {k: row[k] for k in COUNT_FIELDS} for pid, row in stats["processors"].items()},
        tags=stats["tags"],
        counters=stats["counters"],
        errors=errors,
        traces=sorted(traces, key=lambda t: t["line_number"]),
        exit_code=exit_code,
        message=message,
    )
    if check and exit_code != 0:
        raise RunFailed(result)
    return result
