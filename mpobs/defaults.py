"""Every default of a run in one place: workers, task and batch sizes, tracing, queues, kept records."""

from __future__ import annotations

import os

#: Bytes per task of a regular file (planned on line ends).
TASK_BYTES = 1 << 20
#: Bytes per task on the Dask executor: a Dask task costs 1-2 ms of scheduling, so tasks are big.
DASK_TASK_BYTES = 16 << 20
#: Bytes read from a stream or a compressed file at a time (by the coordinator's reader thread).
READ_BYTES = 128 << 10
#: Seconds a stream may be quiet before what it sent so far is cut into a block.
STREAM_FLUSH = 0.1
#: Blocks of a stream or compressed input in memory, per worker: what it has been handed
#: (PREFETCH) and this many more, for the reader's lead and for finished tasks waiting
#: for an earlier one. Each is a task's worth (TASK_BYTES); the reader waits for a free one.
BLOCKS_PER_WORKER = 4
#: Seconds between looks at a followed file that has nothing new (--follow): its lines'
#: latency, and the idle follow's cost (about 1 % of one core at 0.1 s, measured).
FOLLOW_POLL = 0.1
#: Seconds between checkpoints (--checkpoint-every).
CHECKPOINT_EVERY = 1.0
#: Lines per batch. Measured: 2,000 cost 2-4 % more per-batch overhead; 10,000 loses
#: cache locality (bench/README.md).
BATCH_LINES = 5000
#: Share of lines traced with --trace and no --trace-sample.
TRACE_SAMPLE = 0.01
#: Trace and error records a consumer keeps (the run's collector, the dashboard).
KEEP = 1000
#: Recent errors and traces written into --save-metrics.
SAVED_RECENT = 100
#: Characters of a failed line kept in its error record.
ERROR_LINE_CHARS = 200
#: Records per queue message: a task's records go in chunks of this many, the rest at its end.
EVENT_CHUNK = 2000
#: Messages a worker's record queue holds before records are dropped (and counted).
WORKER_QUEUE_MESSAGES = 16
#: Messages the coordinator may have waiting for the dashboard (each one a batch of records).
DASHBOARD_QUEUE_MESSAGES = 512
#: Seconds a processor's call may run before it is reported as stalled (--stall-after).
STALL_AFTER = 30.0
#: Seconds between evaluations of the --alerts rules (Prometheus's usual scrape and rule interval).
ALERTS_INTERVAL = 5.0
#: Seconds a run ended by --fail-on-alert waits for the tasks placed in its output to be written.
ENDING_WAIT = 5.0
#: Seconds a stopped run (Ctrl-C, SIGTERM, --max-errors) waits for a worker inside a processor's
#: call before it kills it: a hanging function must not hold the exit (what it did is not counted).
STOP_CALL_GRACE = 0.3
#: A task that kills its worker this many times fails the run.
MAX_TASK_ATTEMPTS = 3
#: Tasks started ahead of the output, per worker: when one task stalls, the others'
#: finished output waits for it (in memory or part files), so no more is started.
BACKLOG_PER_WORKER = 6
#: Tasks handed to a local worker ahead, so it never waits for the coordinator.
PREFETCH = 2


def default_workers() -> int:
    """One worker process per CPU."""
    return os.cpu_count() or 1


def is_loopback(host: str) -> bool:
    """True for "localhost", 127.0.0.0/8 and ::1 (bracketed or not); every other name may reach other machines."""
    import ipaddress  # here: every `mpobs` start imports this module, few ask this

    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
