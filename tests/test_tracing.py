"""Traces follow lines through the DAG; errors are counted exactly and recorded with their context."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from mpobs.cli.report import summary
from mpobs.metrics.layout import PROC_WIDTH
from mpobs.pipeline.config import DEFAULT_CONFIG, compile_config
from mpobs.run.coordinator import Coordinator
from mpobs.run.options import RunOptions, Tracing
from mpobs.testing import run_pipeline
from mpobs.tracing.records import EventCollector
from mpobs.tracing.tracefile import read_traces
from mpobs.tracing.traces import is_sampled
from tests.helpers import write_dag
from tests.reference import split_lines

ROUTER_DAG = {
    "processors": [
        {"type": "tag_extractor", "id": "tags"},
        {"type": "router", "id": "route", "routes": {"err": {"tag": "error"}, "db": r"\[db\]"}},
        {"type": "uppercase", "id": "up", "inputs": ["route.err"]},
        {"type": "filter", "id": "slow", "pattern": r"slow", "inputs": ["route.db"]},
    ]
}


def test_router_traces_follow_each_branch_at_any_worker_count(workers: int, make_log: Any) -> None:
    data = make_log(3000, awkward=0.01).read_bytes()
    result = run_pipeline(
        ROUTER_DAG, data, workers=workers, trace=1.0, save_traces=True, task_bytes=4096, batch_lines=50
    )
    lines = split_lines(data)
    traces = {t["line_number"]: t for t in result.traces}
    assert sorted(traces) == list(range(1, len(lines) + 1))
    import re

    level = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b")
    for n, line in enumerate(lines, 1):
        t = traces[n]
        assert t["line_id"] == f"in.log:{n}"
        assert t["original_content"] == line
        steps = [(s["processor"], s["status"]) for s in t["path"]]
        m = level.search(line)
        if m and m.group(1) == "ERROR":
            assert steps == [("tags", "emit"), ("route", "route:err"), ("up", "emit")]
            assert t["path"][2].get("text", line) == line.upper()
            assert t["outputs"] == [line.upper()]
        elif "[db]" in line:
            kept = "slow" in line
            assert steps == [("tags", "emit"), ("route", "route:db"), ("slow", "emit" if kept else "drop")]
            assert t["outputs"] == ([line] if kept else [])
        else:
            assert steps == [("tags", "emit"), ("route", "drop")]
            assert t["outputs"] == []


def test_default_sample_is_a_function_of_the_line_number(workers: int, make_log: Any) -> None:
    data = make_log(20_000).read_bytes()
    result = run_pipeline(DEFAULT_CONFIG, data, workers=workers, trace=True, save_traces=True, task_bytes=65536)
    seen = [t["line_number"] for t in result.traces]
    assert seen == [n for n in range(1, 20_001) if is_sampled(n, 0.01)]
    assert 120 < len(seen) < 280  # about 1 %


FAILING_FNS = (
    "def check(line):\n"
    "    if 'ERROR' in line:\n"
    "        raise ValueError('refusing ' + line[:10])\n"
    "    if 'WARN' in line:\n"
    "        return {}['missing']\n"
    "    return line\n"
)
#: Numbers lines, then fails ERROR lines (ValueError) and WARN lines (KeyError).
FAILING = {
    "processors": [
        {"type": "line_counter", "id": "num"},
        {"type": "python", "id": "check", "function": "failfns:check"},
    ]
}


def test_processor_errors_are_counted_exactly_and_recorded(workers: int, make_log: Any) -> None:
    data = make_log(5000).read_bytes()
    lines = split_lines(data)
    result = run_pipeline(FAILING, data, workers=workers, task_bytes=8192, functions={"failfns": FAILING_FNS})
    value_errors = [n for n, x in enumerate(lines, 1) if "ERROR" in x]
    key_errors = [n for n, x in enumerate(lines, 1) if "WARN" in x and "ERROR" not in x]
    stats = result.stats
    assert stats["processors"]["check"]["errors"] == len(value_errors) + len(key_errors)
    assert stats["processors"]["check"]["lines_out"] == len(lines) - len(value_errors) - len(key_errors)
    assert stats["system"]["total_errors"] == len(value_errors) + len(key_errors)
    by_type = {(e["processor"], e["error_type"]): e["count"] for e in stats["errors_by_type"]}
    assert by_type == {("check", "ValueError"): len(value_errors), ("check", "KeyError"): len(key_errors)}
    recent = stats["recent_errors"]
    assert len(recent) == 100
    for rec in recent:
        n = rec["line_number"]
        assert rec["line_id"] == f"in.log:{n}"
        assert rec["processor"] == "check"
        assert rec["line"] == f"Line {n}: {lines[n - 1]}"[:200]
        assert rec["error_type"] == ("ValueError" if n in value_errors else "KeyError")
        assert set(rec) >= {"message", "timestamp", "worker"}
    assert [e["line_number"] for e in result.errors] == sorted(value_errors + key_errors)  # every one recorded
    text = summary(stats)  # what the command line writes on stderr at the end
    assert "errors by processor and type:" in text and "check  ValueError" in text


def test_max_errors_stops_the_run_with_exit_3(make_log: Any, workers: int) -> None:
    data = make_log(20_000).read_bytes()
    fns = {"failfns": FAILING_FNS}
    result = run_pipeline(FAILING, data, workers=workers, max_errors=50, functions=fns, check=False)
    assert result.exit_code == 3, result.message
    assert result.message is not None
    assert "--max-errors 50" in result.message and "last: check on in.log:" in result.message
    stats = result.stats
    assert stats["system"]["state"] == "failed"
    assert stats["system"]["total_lines"] < 20_000
    # the output holds whole tasks, in order, matching the committed counts
    lines = split_lines(data)
    kept = [f"Line {n}: {x}" for n, x in enumerate(lines, 1) if "ERROR" not in x and "WARN" not in x]
    assert result.lines == kept[: len(result.lines)] and len(result.lines) == stats["processors"]["check"]["lines_out"]


def test_without_max_errors_errors_never_stop_a_run(make_log: Any, workers: int) -> None:
    data = make_log(20_000).read_bytes()
    result = run_pipeline(FAILING, data, workers=workers, functions={"failfns": FAILING_FNS}, task_bytes=65536)
    assert result.exit_code == 0 and result.stats["system"]["total_lines"] == 20_000


class SlowCollector(EventCollector):
    """A consumer that cannot keep up."""

    def add(self, *message: Any) -> None:
        time.sleep(0.01)
        super().add(*message)


class StalledCollector(EventCollector):
    """A consumer that takes nothing until the run's output (``out``) holds all its ``lines``: workers that
    waited for it instead of dropping records would never get there (it gives up after a minute)."""

    def __init__(self, out: Path, lines: int) -> None:
        super().__init__()
        self.out, self.lines, self.stalled = out, lines, True

    def add(self, *message: Any) -> None:
        deadline = time.monotonic() + 60
        while self.stalled and time.monotonic() < deadline:
            try:
                with open(self.out, "rb") as f:
                    if sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")) >= self.lines:
                        break
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        self.stalled = False
        super().add(*message)


def test_flood_of_traces_drops_and_counts_but_never_blocks_workers(tmp_path: Path, make_log: Any, workers: int) -> None:
    log = make_log(120_000)
    pipeline = compile_config({"processors": [{"type": "line_counter", "id": "n"}]})
    # 1,200 messages of 100 traces against queues of 16 messages, and readers that take none until every
    # line is in the output: records must be dropped, however fast or slow the workers are.
    opts = RunOptions(
        str(log), str(tmp_path / "out"), workers=workers, batch_lines=100, tracing=Tracing(1.0), event_chunk=100
    )
    outcome = Coordinator(pipeline, opts, collector=StalledCollector(tmp_path / "out", 120_000)).run()
    s = outcome.stats["system"]
    assert s["state"] == "done"
    assert s["traces_dropped"] > 0  # the workers went on instead of waiting
    # every line was sampled once; without --save-traces each task builds the traces of its last 1,000 only
    assert s["traces_sent"] + s["traces_dropped"] + s["traces_skipped"] == 120_000
    assert s["traces_skipped"] > 0
    assert s["traces_delivered"] == s["traces_sent"]  # what was sent arrived, to the record
    assert (tmp_path / "out").read_bytes().count(b"\n") == 120_000


def test_save_traces_waits_instead_of_dropping(tmp_path: Path, make_log: Any, workers: int) -> None:
    log = make_log(20_000)
    pipeline = compile_config({"processors": [{"type": "line_counter", "id": "n"}]})
    saved = tmp_path / "t.jsonl"
    opts = RunOptions(
        str(log),
        str(tmp_path / "out"),
        workers=workers,
        batch_lines=500,
        tracing=Tracing(1.0, save=str(saved)),
    )
    outcome = Coordinator(pipeline, opts, collector=SlowCollector()).run()
    s = outcome.stats["system"]
    assert s["traces_dropped"] == 0
    assert s["traces_sent"] == s["traces_delivered"] == 20_000
    assert sorted(t["line_number"] for t in read_traces(str(saved))) == list(range(1, 20_001))


def test_metrics_hold_recent_traces_and_errors(make_log: Any) -> None:
    stats = run_pipeline(DEFAULT_CONFIG, make_log(5000).read_bytes(), workers=2, trace=0.5, task_bytes=65536).stats
    assert len(stats["recent_traces"]) == 100
    assert stats["recent_errors"] == []
    assert stats["system"]["trace"] is True
    t = stats["recent_traces"][0]
    assert [s["processor"] for s in t["path"]][:2] == ["line_counter", "tag_extractor"]


@pytest.mark.parametrize("rate", [0.9999, 0.5, 0.3, 0.0123, 0.01, 0.001, 0.00099, 1e-5])
@pytest.mark.parametrize("first", [1, 987_654_321, 2**33 + 5])
def test_sampled_lines_are_exactly_the_sampled_line_numbers(rate: float, first: int) -> None:
    """The jump table (and numpy, below its rates) picks exactly the lines is_sampled picks."""
    from mpobs.tracing.traces import sampled

    for start, count in ((first, 40_000), (first + 7, 1), (first, 0)):
        assert sampled(start, count, rate) == [n for n in range(start, start + count) if is_sampled(n, rate)]


@pytest.mark.parametrize("rate", [0.01, 0.3])
def test_sampling_rate_is_about_right(rate: float) -> None:
    from mpobs.tracing.traces import sampled

    picked = sampled(1, 100_000, rate)
    assert abs(len(picked) / 100_000 - rate) < 0.2 * rate
    assert picked == [n for n in range(1, 100_001) if is_sampled(n, rate)]


class _Recorder:
    """Keeps every step's input and output, to trace lines the slow way afterwards."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, Any, Any, list[Any]]] = []

    def step(self, node: Any, inp: Any, out: Any, errors: list[Any]) -> None:
        self.steps.append((node.index, inp, out, list(errors)))


def _slow_trace(n: int, original: str, recorder: _Recorder, out: Any) -> tuple[Any, ...]:
    """One line's compact trace by scanning every batch (BatchTrace keeps positions instead)."""
    path = []
    for p, inp, res, errors in recorder.steps:
        if n not in inp.nums:
            continue
        lo = inp.nums.index(n)
        hi = lo + inp.nums.count(n)
        extra: dict[str, Any] = {}
        if isinstance(res, dict):
            status = next((f"route:{r}" for r, b in res.items() if n in b.nums), "drop")
        else:
            at = [i for i, m in enumerate(res.nums) if m == n]
            status = "emit" if at else "drop"
            if at:
                olo, ohi = at[0], at[-1] + 1
                if res.texts[olo:ohi] != inp.texts[lo:hi]:
                    extra.update(
                        {"text": res.texts[olo]} if ohi - olo == 1 == hi - lo else {"texts": res.texts[olo:ohi]}
                    )
                if res.tags is not None and (inp.tags is None or res.tags[olo] != inp.tags[lo]):
                    extra["tags"] = list(res.tags[olo])
        if hi - lo > 1:
            extra["copies"] = hi - lo
        failed = {m: e for m, _, e in errors}
        if n in failed:
            status = "error"
            extra["error"] = f"{type(failed[n]).__name__}: {failed[n]}"
        path.append((p, status, extra or None))
    return (n, original, path, [t for m, t in zip(out.nums, out.texts) if m == n])


def test_batch_trace_matches_a_slow_scan_through_router_fan_in_copies_and_errors(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from mpobs.pipeline.batch import Batch
    from mpobs.tracing.traces import BatchTrace

    config = json.loads(write_dag(tmp_path).read_text())
    # Steps after a filter and after a step that copies lines: they take batches whose traced
    # lines moved (positions kept, not searched).
    config["processors"] += [
        {"type": "uppercase", "id": "shout", "inputs": ["audit"]},
        {"type": "lowercase", "id": "quiet", "inputs": ["annotate"]},
    ]  # takes the copies
    monkeypatch.syspath_prepend(str(tmp_path))
    pipeline = compile_config(config)
    texts = [
        "x WARN explode",
        "x WARN dup me",
        "ERROR [api] user login failed",
        "[db] no level",
        "INFO [web] ok",
        "DEBUG [db] chatty",
        "WARN dup login",
        "INFO login [auth] fine",
        "ERROR plain",
        "no tags at all",
    ] * 30
    first = 1001
    batch = Batch(list(range(first, first + len(texts))), texts)
    traced = [n for n in batch.nums if n % 3]  # most lines, not all
    recorder = _Recorder()

    class Both:
        def __init__(self) -> None:
            self.trace = BatchTrace(traced, batch)

        def step(self, *a: Any) -> None:
            recorder.step(*a)
            self.trace.step(*a)

    both = Both()
    out = pipeline.run_batch(batch, [0] * (len(pipeline.nodes) * PROC_WIDTH), [], both)
    got = [(n, o, [(p, s, x) for p, s, _, x in path], outs) for n, o, path, outs, _, _ in both.trace.finish(out)]
    want = [_slow_trace(n, texts[n - first], recorder, out) for n in traced]
    assert got == want
    statuses = {s for _, _, path, _ in got for _, s, _ in path}
    assert {"emit", "drop", "error", "route:err", "route:warn", "route:rest"} <= statuses
    assert any(x and "copies" in x for _, _, path, _ in got for _, _, x in path)


def test_every_line_sampled_builds_only_the_traces_that_can_be_shown(
    tmp_path: Path, cli: Any, make_log: Any, workers: int
) -> None:
    """--trace-sample 1 without --save-traces: each task builds the traces of its last 1,000 lines (only the
    most recent 1,000 can be shown); the others are counted as skipped, and the newest line is traced.
    The real pool: traces sent are counted by its workers."""
    log = make_log(20_000)
    m = tmp_path / "m.json"
    res = cli(
        "process",
        str(log),
        "-w",
        str(workers),
        "-o",
        str(tmp_path / "out"),
        "--trace-sample",
        "1",
        "--task-size",
        "262144",
        "--save-metrics",
        str(m),
    )
    assert res.returncode == 0, res.stderr.decode()
    stats = json.loads(m.read_text())
    s = stats["system"]
    tasks = s["tasks_done"]
    assert tasks > 1 and s["traces_sent"] == s["traces_delivered"] == 1000 * tasks
    assert s["traces_sent"] + s["traces_dropped"] + s["traces_skipped"] == 20_000
    assert 20_000 in {t["line_number"] for t in stats["recent_traces"]} or workers > 1


def _live_and_saved(pipeline: Any, texts: list[str], pick: Any, path: Path) -> list[dict[str, Any]]:
    """Runs two batches of ``texts`` (input 2 of a run, from its line 1001) tracing the lines ``pick(nums)``
    chooses, live (BatchTrace) and into a --save-traces file at ``path``; returns the live traces."""
    from mpobs.pipeline.batch import Batch
    from mpobs.tracing.tracefile import BatchRecorder, header
    from mpobs.tracing.traces import BatchTrace, expand

    inputs = [("in.log", "logs/in.log"), ("other.log", "other.log")]
    live, saved = [], [header(pipeline, inputs)]
    for first in (1001, 1001 + len(texts)):
        batch = Batch(list(range(first, first + len(texts))), texts)
        traced = pick(batch.nums)

        class Both:
            """Both see each step at the same time (a real clock, read once a step)."""

            def __init__(self) -> None:
                self.now = 0.0
                clock = lambda: self.now  # noqa: E731
                self.trace, self.record = BatchTrace(traced, batch, clock), BatchRecorder(traced, batch, clock)

            def step(self, *a: Any) -> None:
                self.now = time.time()
                self.trace.step(*a)
                self.record.step(*a)

        both = Both()
        out = pipeline.run_batch(batch, [0] * (len(pipeline.nodes) * PROC_WIDTH), [], both)
        live += [expand(t, inputs, pipeline.ids) for t in both.trace.finish(out, 1, 1000)]
        saved.append(both.record.line(1, 1000))
    path.write_bytes(b"".join(saved))
    return live


@pytest.mark.parametrize("traced_lines", ["all", "most", "one"])
def test_saved_records_replay_to_the_live_traces(tmp_path: Path, monkeypatch: Any, traced_lines: str) -> None:
    """A --save-traces record (mpobs.tracing.tracefile), read back, gives each line the trace BatchTrace builds live:
    through a router, fan-in, copies, changed texts and tags, and errors; every line or only some traced."""
    from mpobs.tracing.tracefile import TraceReader

    config = json.loads(write_dag(tmp_path).read_text())
    config["processors"] += [
        {"type": "uppercase", "id": "shout", "inputs": ["audit"]},
        {"type": "lowercase", "id": "quiet", "inputs": ["annotate"]},
    ]
    monkeypatch.syspath_prepend(str(tmp_path))
    texts = [
        "x WARN explode",
        "x WARN dup me",
        "ERROR [api] user login failed",
        "[db] no level",
        "INFO [web] ok",
        "DEBUG [db] chatty",
        "WARN dup login",
        "INFO login [auth] fine",
        "ERROR plain",
        "no tags at all",
    ] * 30
    pick = {"all": list, "most": lambda nums: [n for n in nums if n % 3], "one": lambda nums: [nums[7]]}[traced_lines]
    path = tmp_path / "t.jsonl"
    live = _live_and_saved(compile_config(config), texts, pick, path)
    assert list(TraceReader(str(path))) == live
    statuses = {s["status"] for t in live for s in t["path"]}
    if traced_lines != "one":
        assert {"emit", "drop", "error", "route:err", "route:warn", "route:rest"} <= statuses
        assert any("copies" in s and "texts" in s for t in live for s in t["path"])
    assert live[0]["line_id"] == f"other.log:{live[0]['line_number'] - 1000}" and live[0]["file"] == "other.log"
    # one line, found without replaying the records that cannot hold it
    pick_one = live[len(live) // 2]
    assert list(TraceReader(str(path), [pick_one["line_number"]])) == [pick_one]
    assert list(TraceReader(str(path), [pick_one["line_id"]])) == [pick_one]
    name, _, n = pick_one["line_id"].rpartition(":")
    assert list(TraceReader(str(path), [f"{name}:0{n}"])) == [pick_one]


def test_saved_records_replay_fan_in_of_a_tagged_and_an_untagged_branch(tmp_path: Path) -> None:
    """Merged with a tagged branch, lines of an untagged one have tags () live; traced alone they would
    have none, and a later step changing another line's tags must not show them as changed."""
    from mpobs.tracing.tracefile import TraceReader

    pipeline = compile_config(
        {
            "processors": [
                {"type": "router", "id": "r", "routes": {"a": "^A"}, "default": "b"},
                {"type": "tag_extractor", "id": "t", "inputs": ["r.a"]},
                {"type": "tag_extractor", "id": "m", "rules": {"x": "X"}, "inputs": ["t", "r.b"]},
            ]
        }
    )
    path = tmp_path / "t.jsonl"
    live = _live_and_saved(pipeline, ["A ERROR", "X one", "Y two"], lambda nums: nums[1:], path)
    assert list(TraceReader(str(path))) == live
    assert live[1]["path"][-1] == {"processor": "m", "status": "emit", "timestamp": live[1]["path"][-1]["timestamp"]}


def test_a_batch_function_that_changes_its_list_changes_no_other_branch(
    tmp_path: Path, monkeypatch: Any, workers: int
) -> None:
    """A batch function gets a copy of the lines: changing it in place leaves what a sibling branch takes,
    and what traces say came in, as they were."""
    from mpobs.tracing.tracefile import TraceReader

    (tmp_path / "inplace.py").write_text(
        "def shout(lines):\n    for i, x in enumerate(lines):\n        lines[i] = x.upper()\n    return lines\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {
        "processors": [
            {"type": "python", "id": "shout", "function": "inplace:shout", "batch": True},
            {"type": "filter", "id": "quiet", "pattern": "error", "inputs": ["input"]},
        ]
    }
    texts = ["an error here", "fine", "another error"]
    path = tmp_path / "t.jsonl"
    live = _live_and_saved(compile_config(config), texts, list, path)
    assert list(TraceReader(str(path))) == live
    assert live[0]["original_content"] == "an error here"
    assert live[0]["outputs"] == ["AN ERROR HERE", "an error here"]  # the filter saw the line as it came in
    assert [s.get("text") for s in live[0]["path"]] == ["AN ERROR HERE", None]
    result = run_pipeline(config, texts * 1000, workers=workers, batch_lines=100, task_bytes=4096)
    want = [x for t in texts * 1000 for x in [t.upper()] + ([t] if "error" in t else [])]
    assert result.lines == want


def test_mpobs_traces_prints_picks_and_refuses(tmp_path: Path, cli: Any, make_log: Any) -> None:
    """`mpobs traces FILE`: every saved trace as JSON Lines; --line, --status and --processor pick; a file
    that is not a trace file is exit 2 with one line; a file cut short by a killed run gives what it holds."""
    log = make_log(3000, awkward=0.01)
    config = tmp_path / "dag.json"
    config.write_text(json.dumps(ROUTER_DAG))
    saved = tmp_path / "t.jsonl"
    res = cli(
        "process",
        str(log),
        "-c",
        str(config),
        "-w",
        "2",
        "-o",
        str(tmp_path / "out"),
        "--trace-sample",
        "1",
        "--save-traces",
        str(saved),
        "--task-size",
        "65536",
        "--batch-lines",
        "500",
    )
    assert res.returncode == 0, res.stderr.decode()

    def traces(*args: str) -> list[dict[str, Any]]:
        r = cli("traces", *args)
        assert r.returncode == 0, r.stderr.decode()
        return [json.loads(x) for x in r.stdout.decode().splitlines()]

    every = traces(str(saved))
    assert sorted(t["line_number"] for t in every) == list(range(1, 3001))
    assert traces(str(saved), "--line", "1234", "--line", "in.log:7") == [
        t for t in every if t["line_number"] in (7, 1234)
    ]
    routed = traces(str(saved), "--status", "route:err", "--processor", "route")
    assert routed and routed == [t for t in every if any(s["status"] == "route:err" for s in t["path"])]
    assert traces(str(saved), "--processor", "slow") == [
        t for t in every if "slow" in [s["processor"] for s in t["path"]]
    ]

    whole = saved.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(whole[: len(whole) // 2])  # a run killed while writing
    r = cli("traces", str(cut))
    assert r.returncode == 0 and "cut short" in r.stderr.decode()
    got = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert 0 < len(got) < 3000 and got == every[: len(got)]

    header = whole[: whole.index(b"\n") + 1]
    for content, says in (
        (b"hello\n", "is not JSON"),
        (b'{"a": 1}\n', "not an mpobs --save-traces"),
        (whole.replace(b'"version": 2', b'"version": 99', 1), "version 99"),
        (b'{"format": "mpobs-traces", "version": 2}\n', "line 1 is damaged"),
        (header + b'{"k": 0, "off": 0}\n', "line 2 is damaged"),
        (header + b'{"k": 0, "off": 0, "first": 1, "n": 1, "orig": ["x"], "steps": [[0]]}\n', "line 2 is damaged"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_bytes(content)
        r = cli("traces", str(bad))
        err = r.stderr.decode()
        assert r.returncode == 2 and says in err and "Traceback" not in err, err
    r = cli("traces", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and "cannot read" in r.stderr.decode()
    r = cli("traces", str(saved), "--line", "\u00b2", "--line", "in.log:\u00b2")  # digits that are not numbers
    assert r.returncode == 0 and r.stdout == b"" and "no saved trace" in r.stderr.decode()
    (tmp_path / "empty.jsonl").write_bytes(b"")  # what a run before this format wrote when it traced nothing
    r = cli("traces", str(tmp_path / "empty.jsonl"))
    assert r.returncode == 0 and r.stdout == b"" and "empty" in r.stderr.decode()
