"""A local worker process: takes tasks over its pipe, flushes counts to its in-flight rows."""

from __future__ import annotations

import ctypes
import os
import signal
import traceback
from typing import Any

import numpy as np

from mpobs.dag import Pipeline
from mpobs.events import QueueEvents
from mpobs.segment import WORKER_FIELDS, Layout, StatsSegment
from mpobs.task import TaskSettings, run_task

_WF = {f: i for i, f in enumerate(WORKER_FIELDS)}


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies; elsewhere the checks per batch do it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class RowSink:
    """Counts of the running task go to the worker's in-flight row, once per batch."""

    def __init__(self, seg: StatsSegment, row: int, slot: int) -> None:
        self.seg, self.row, self.slot = seg, row, slot

    def flush(self, delta: np.ndarray, traces_sent: int, traces_dropped: int, errors_sent: int,
              errors_dropped: int) -> None:  # fmt: skip
        wdelta = None
        if traces_sent or traces_dropped or errors_sent or errors_dropped:
            wdelta = np.zeros(len(WORKER_FIELDS), dtype=np.int64)
            wdelta[_WF["traces_sent"]] = traces_sent
            wdelta[_WF["traces_dropped"]] = traces_dropped
            wdelta[_WF["errors_sent"]] = errors_sent
            wdelta[_WF["errors_dropped"]] = errors_dropped
        self.seg.flush(self.row, delta, self.slot, wdelta)


def worker_main(
    slot: int,
    conn: Any,
    seg_name: str,
    layout: Layout,
    lock: Any,
    pipeline: Pipeline,
    settings: TaskSettings,
    events_q: Any,
    wait_traces: bool,
    stop_event: Any,
    parent_pid: int,
    part_dir: str,
) -> None:
    """Run tasks until told to stop (None), the pipe closes, or the parent dies."""
    die_with_parent(parent_pid)
    # Ctrl-C (and a SIGTERM sent to the process group) reach every process; the
    # coordinator decides what stops, and stops workers itself (stop event, SIGKILL).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seg = StatsSegment.attach(seg_name, layout, lock)
    settings.worker = str(slot)
    events = QueueEvents(events_q, wait_traces) if events_q is not None else None

    max_errors = settings.max_errors

    def should_stop() -> bool:
        if max_errors is not None and seg.live_errors() >= max_errors:
            stop_event.set()  # every worker stops at its next batch; the coordinator reports it
        return stop_event.is_set() or os.getppid() != parent_pid

    try:
        seg.set_worker(slot, pid=os.getpid(), alive=1)
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg is None:
                break
            task, seq = msg
            part = os.path.join(part_dir, f"part-{task.index:09d}")
            sink = RowSink(seg, layout.inflight_row(slot, seq), slot)
            result = run_task(task, pipeline, layout, settings, part, sink, events, should_stop)
            if result is None:
                break
            conn.send(("done", seq, result))
    except Exception:
        try:
            conn.send(("fatal", traceback.format_exc()))
        except OSError:
            pass
    finally:
        seg.close()
        conn.close()
