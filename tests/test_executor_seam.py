"""The Executor seam: an executor that finishes, loses and reorders tasks gets the local pool's exact answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpobs.executors.testing import AdversarialExecutor
from mpobs.pipeline.config import DEFAULT_CONFIG
from mpobs.testing import PipelineResult, run_pipeline
from tests.helpers import SMALL_TASKS, expected_dag, saved_traces, write_dag
from tests.reference import default_pipeline, split_lines

COUNT_FIELDS = ("lines_in", "lines_out", "errors", "batches")


def _comparable(stats: dict[str, Any]) -> dict[str, Any]:
    """What must be identical whatever ran the tasks (no times, no per-worker rows)."""
    s = stats["system"]
    return {
        "processors": {pid: {k: p[k] for k in COUNT_FIELDS} for pid, p in stats["processors"].items()},
        "tags": stats["tags"],
        "counters": stats["counters"],
        "errors_by_type": stats["errors_by_type"],
        "system": {
            k: s[k] for k in ("total_lines", "bytes_done", "bytes_total", "tasks_done", "state", "total_errors")
        },
    }


def _run_inline(log: Path, config: Path, executor: AdversarialExecutor) -> PipelineResult:
    """The run the CLI made, with ``executor`` in this process (SMALL_TASKS, traces saved at 0.05)."""
    return run_pipeline(config, log, executor=executor, task_bytes=1024, batch_lines=7, trace=0.05, save_traces=True)


@pytest.mark.parametrize("writes_output", [False, True], ids=["results-carry-output", "executor-writes-output"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_an_adversarial_executor_gives_the_local_pools_answer(
    tmp_path: Path, cli: Any, make_log: Any, seed: int, writes_output: bool
) -> None:
    log = make_log(3000, awkward=0.01)
    log.write_bytes(log.read_bytes() + b"x WARN explode\nx WARN dup me\nERROR [api] user login failed\n")
    config = write_dag(tmp_path)
    local_out, local_m, local_t = tmp_path / "local.txt", tmp_path / "local.json", tmp_path / "local.jsonl"
    res = cli(
        "process",
        str(log),
        "-c",
        str(config),
        "-w",
        "2",
        "-o",
        str(local_out),
        "--save-metrics",
        str(local_m),
        "--trace-sample",
        "0.05",
        "--save-traces",
        str(local_t),
        *SMALL_TASKS,
    )
    assert res.returncode == 0, res.stderr.decode()

    executor = AdversarialExecutor(capacity=4, seed=seed, lose=0.2, writes_output=writes_output)
    result = _run_inline(log, config, executor)

    assert executor.started and executor.stopped
    # Live /stats never counted a lost task: once all is committed, nothing is pending or in flight.
    assert executor.live_at_end == executor.committed_at_end
    assert executor.losses > 0 and executor.runs > result.stats["system"]["tasks_done"]  # it really lost some
    assert result.output == local_out.read_bytes()
    want, _, _ = expected_dag(split_lines(log.read_bytes()))
    assert result.output == "".join(x + "\n" for x in want).encode("utf-8", "surrogateescape")
    assert _comparable(result.stats) == _comparable(json.loads(local_m.read_text()))
    assert result.traces == saved_traces(local_t)  # every sampled line once, though its task ran again
    assert result.stats["meta"]["executor"] == "adversarial"


def test_a_task_lost_three_times_fails_the_run_after_the_tasks_before_it(make_log: Any) -> None:
    from mpobs.inputs.inputset import open_inputs

    log = make_log(2000)
    source = open_inputs([str(log)])
    tasks = list(source.tasks(4096))
    source.close()
    assert len(tasks) > 5
    executor = AdversarialExecutor(capacity=3, seed=5, lose=0.0, always_lose=frozenset({3}))
    result = run_pipeline(DEFAULT_CONFIG, log, executor=executor, task_bytes=4096, batch_lines=5000, check=False)

    assert result.exit_code == 1
    assert result.message == f"{tasks[3].describe()} killed its worker 3 times; giving up"
    data = log.read_bytes()
    before = data[: tasks[3].start]  # tasks 0-2, whole; nothing of task 3 or after
    assert result.output == default_pipeline(before)[0]
    stats = result.stats
    assert stats["system"]["state"] == "failed"
    assert stats["system"]["total_lines"] == tasks[2].last_line
    assert stats["system"]["bytes_done"] == tasks[3].start


@pytest.mark.parametrize("seed", [1, 2])
def test_an_adversarial_executor_runs_blocks_of_a_compressed_input(
    tmp_path: Path, cli: Any, make_log: Any, seed: int
) -> None:
    """Blocks (decoded by the coordinator, in an in-memory store) lost and run again give the file's answer."""
    import gzip

    log = make_log(3000, awkward=0.01)
    gz = tmp_path / "in.log.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    config = write_dag(tmp_path)
    local_out, local_m = tmp_path / "local.txt", tmp_path / "local.json"
    res = cli(
        "process",
        str(log),
        "-c",
        str(config),
        "-w",
        "2",
        "-o",
        str(local_out),
        "--save-metrics",
        str(local_m),
        *SMALL_TASKS,
    )
    assert res.returncode == 0, res.stderr.decode()

    executor = AdversarialExecutor(capacity=3, seed=seed, lose=0.25)
    result = _run_inline(gz, config, executor)

    assert executor.losses > 0
    assert result.output == local_out.read_bytes()
    got, want = _comparable(result.stats), _comparable(json.loads(local_m.read_text()))
    for doc in (got, want):  # bytes are compressed bytes for the .gz; tasks (so batches) are its blocks
        for k in ("bytes_done", "bytes_total", "tasks_done"):
            doc["system"].pop(k)
        for p in doc["processors"].values():
            p.pop("batches")
    assert got == want
    assert result.stats["inputs"][0] | {"bytes_read": 0} == {
        "name": str(gz),
        "kind": "file",
        "compression": "gzip",
        "bytes_read": 0,
        "bytes_total": gz.stat().st_size,
        "lines": 3000,
        "lines_done": 3000,
        "state": "done",
    }
    assert result.stats["system"]["bytes_done"] == gz.stat().st_size
