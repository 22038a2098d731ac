"""What runs on the Dask workers: a task, and the probe before the run.

Imported by the workers (through the functions the client process submits), never by
the coordinator. The pipeline arrives as its config (``PipelineSpec``) and is built once
per worker process.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any

from mpobs.errors import describe
from mpobs.inputs.base import Task

#: Bytes of each input file the probe compares (a hash of them).
PROBE_HEAD = 1 << 16
#: Seconds between two live reports of a running task.
PROGRESS_EVERY = 0.5

_PIPELINES: dict[str, Any] = {}
_BUILD_LOCK = threading.Lock()


def _pipeline(spec: Any) -> Any:
    token = spec.token
    with _BUILD_LOCK:
        pipeline = _PIPELINES.get(token)
        if pipeline is None:
            pipeline = _PIPELINES[token] = spec.build()
    return pipeline


class _Progress:
    """A running task's counts so far, logged as an event every PROGRESS_EVERY seconds (a CountSink).

    For the live view only: what counts is the result the task returns, when it is accepted.
    """

    def __init__(self, worker: Any, topic: str, key: str, ncols: int) -> None:
        self.worker, self.topic, self.key = worker, topic, key
        self.total = [0] * ncols
        self.due = time.monotonic() + PROGRESS_EVERY

    def flush(self, delta: list[int], *_sent: int) -> None:
        for i, v in enumerate(delta):
            self.total[i] += v
        now = time.monotonic()
        if now >= self.due:
            self.due = now + PROGRESS_EVERY
            self.worker.log_event(self.topic, {"key": self.key, "counts": list(self.total)})


def run_remote(spec: Any, layout: Any, settings: Any, task: Task, part: str | None, topic: str) -> tuple[Any, str]:
    """One task on a Dask worker: its result (with its output and its records), and the worker.

    The output is bytes in the result, or written to the file ``part`` (its path in the result).
    Its counts so far are logged on ``topic`` while it runs.
    """
    from distributed import get_worker

    from mpobs.executors.task import KeptRecords, run_task

    worker = get_worker()
    settings = settings.for_worker(worker.address)
    records = KeptRecords()
    progress = _Progress(worker, topic, str(worker.get_current_task()), layout.ncols)
    if part is not None:
        with open(part, "wb") as f:
            result = run_task(task, _pipeline(spec), layout, settings, f.write, progress, records)
        output: bytes | str = part
    else:
        out = bytearray()
        result = run_task(task, _pipeline(spec), layout, settings, out.extend, progress, records)
        output = bytes(out)
    assert result is not None  # nothing stops a Dask task between batches
    records.attach(result).output = output
    return result, worker.address


def head_hash(path: str) -> tuple[int, str]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return size, hashlib.sha256(f.read(PROBE_HEAD)).hexdigest()


def probe(files: list[str], spec: Any) -> dict[str, Any]:
    """On a worker: what it sees of each file, and whether the pipeline builds there."""
    seen: dict[str, Any] = {}
    for path in files:
        try:
            seen[path] = list(head_hash(path))
        except OSError as err:
            seen[path] = err.strerror or str(err)
    try:
        _pipeline(spec)
        built = None
    except Exception as err:
        built = describe(err)
    return {"files": seen, "pipeline": built}
