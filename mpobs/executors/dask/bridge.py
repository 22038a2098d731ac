"""The Dask client process: the one process of a run that imports Dask distributed.

``mpobs.executors.dask.executor`` starts it (``python -m mpobs.executors.dask.bridge FD``) and talks to it
over a socket pair, in the messages of ``mpobs.executors.dask.messages`` (which says who sends
what, and when).

Why a process of its own: importing distributed alone costs ~31 MB, and its client
(threads, an event loop, its comms' buffers; a LocalCluster's scheduler too) ~20 MB
more; the coordinator, which holds the stats segment and writes the output, stays
at the size of a local run. The process starts with SIGINT, SIGTERM and SIGHUP
ignored (the coordinator decides when it stops) and ends when the coordinator's end
of the socket closes, whatever killed it.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from mpobs.errors import describe
from mpobs.executors.dask.messages import (
    Close,
    Connect,
    Connected,
    Ended,
    Failed,
    Probe,
    Probed,
    Progress,
    Refused,
    Start,
    Submit,
    ToBridge,
    ToExecutor,
    Workers,
)
from mpobs.executors.dask.remote import probe, run_remote

#: Seconds to reach a scheduler given with --scheduler before giving up.
CONNECT_TIMEOUT = 10
#: Seconds between two reports of the cluster's workers.
WORKERS_EVERY = 1.0
#: Seconds a wait for a lost result's new run lasts before its state is looked at again.
WAIT_AGAIN_S = 5.0
INSTALL_HINT = "the Dask executor needs Dask distributed: pip install 'mpobs[dask]'"


class Bridge:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.client: Any = None
        self.cluster: Any = None
        self.futures: dict[str, Any] = {}
        self.finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[ToExecutor | None] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # A sender of its own: the loop keeps reading the coordinator's messages while a big
        # result is on its way to it, so neither end can block the other.
        self.sender = threading.Thread(target=self._send_all, name="mpobs-bridge-send", daemon=True)
        self.sender.start()

    def _send_all(self) -> None:
        while (msg := self.outbox.get()) is not None:
            try:
                self.conn.send(msg)
            except OSError:
                return  # the coordinator is gone: the loop sees the end of file

    def send(self, msg: ToExecutor) -> None:
        self.outbox.put(msg)

    # -- connecting ---------------------------------------------------------------
    def connect(self, workers: int, address: str | None) -> None:
        try:
            import dask
            import distributed
        except ImportError:
            self.send(Refused(INSTALL_HINT))
            return
        _quiet_dask_logs()
        if address is None:
            # A worker death is reported at once (KilledWorker), so that our scheduler counts it:
            # three deaths of one task fail the run, as with the local pool. One task at a time on
            # each worker thread, so that a death is blamed on the task it ran.
            dask.config.set(
                {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}
            )
            # Dask's workers give freed memory back to the system at once (MALLOC_TRIM_THRESHOLD_
            # 64 KiB), so every 16 MiB task faulted its buffers in again: keeping them (and big
            # buffers on the heap, not in fresh mmaps) took a 6M-line run from 4.6-5.0 s to 4.2-4.3 s.
            dask.config.set(
                {
                    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 256 << 20,
                    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 << 20,
                }
            )
            self.cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=0,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.CRITICAL,
            )
            self.client = distributed.Client(self.cluster, set_as_default=False)
        else:
            try:
                self.client = distributed.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError) as err:
                self.send(Refused(f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT} s: {err}"))
                return
        info = self.client.scheduler_info()
        found = info.get("workers", {})
        if not found:
            self.send(Refused(f"the Dask scheduler at {address or 'the LocalCluster'} has no workers"))
            return
        self.send(Connected(sum(w.get("nthreads", 1) for w in found.values()), self.client.dashboard_link))

    # -- running ------------------------------------------------------------------
    def start(self, spec: Any, layout: Any, settings: Any, part_dir: str | None) -> None:
        self.args = (spec, layout, settings)
        self.part_dir = part_dir
        self.topic = f"mpobs-progress-{os.getpid()}-{id(self)}"
        self.client.subscribe_topic(self.topic, self._progress)

    def _progress(self, event: tuple[float, dict[str, Any]]) -> None:
        """In the client's event loop: a running task's counts so far."""
        msg = event[1]
        if msg.get("key") in self.futures:
            self.send(Progress(msg["key"], msg["counts"]))

    def submit(self, key: str, task: Any, part: str | None) -> None:
        fut = self.client.submit(run_remote, *self.args, task, part, self.topic, key=key, pure=False)
        self.futures[key] = fut
        fut.add_done_callback(self._finished)

    def probe(self, files: list[str], spec: Any) -> None:
        """``mpobs.executors.dask.remote.probe`` on every worker; one that goes away meanwhile is left out (if it comes
        back, it is the same machine), and a run with none left is refused."""
        answers = self.client.run(probe, files, spec, on_error="return")
        gone = {w for w, a in answers.items() if isinstance(a, OSError)}  # CommClosedError: it died
        failed = {w: a for w, a in answers.items() if isinstance(a, BaseException) and w not in gone}
        if failed:
            worker, err = sorted(failed.items())[0]
            self.send(Refused(f"Dask worker {worker} could not run the probe: {describe(err)}"))
        elif len(gone) == len(answers):
            self.send(Refused("every Dask worker went away while the input was being checked"))
        else:
            self.send(Probed({w: a for w, a in answers.items() if w not in gone}))

    def _finished(self, fut: Any) -> None:
        """In the client's event loop: hand the future to the loop (which may block fetching its result)."""
        self.finished.put(fut)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def report(self, fut: Any) -> None:
        """Tell the coordinator how a task ended: once its future is finished, erred or cancelled."""
        from distributed import KilledWorker

        if fut.key not in self.futures:
            return
        if fut.status in ("lost", "pending"):
            # It had finished, and the worker holding its result went away before we fetched it:
            # Dask computes it again by itself. Not an end, not an error of the task: wait for it.
            threading.Thread(target=self._finished_again, args=(fut,), name="mpobs-bridge-lost", daemon=True).start()
            return
        del self.futures[fut.key]
        try:
            result = fut.result()
        except KilledWorker as err:
            self.send(Ended(fut.key, "killed", err.last_worker.address))
        except Exception as err:
            if fut.status == "cancelled":
                self.send(Ended(fut.key, "cancelled", ""))
            elif fut.status == "error":
                self.send(Ended(fut.key, "error", describe(err)))
            else:  # it could not be fetched: run it again
                self.send(Ended(fut.key, "lost", f"its result was lost ({describe(err)})"))
        else:
            self.send(Ended(fut.key, "finished", result))

    def _finished_again(self, fut: Any) -> None:
        """In a thread of its own: wait until Dask has computed a lost result again (or given up), then report it.

        ``distributed.wait`` needs the client as the thread's current one (ours is not the default);
        a wait that fails while the result is still being computed again is tried again after a pause,
        never in a loop that spins; once the client closes, nothing is reported any more.
        """
        from distributed import wait

        while fut.status in ("lost", "pending"):
            if self.client is None or self.client.status in ("closing", "closed"):
                return
            try:
                with self.client.as_current():
                    wait(fut, timeout=WAIT_AGAIN_S)
            except Exception:
                time.sleep(0.1)
        self._finished(fut)

    def workers(self) -> None:
        try:
            info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:
            info = {}
        view = {
            address: {
                "name": str(w.get("name", "")),
                "nthreads": w.get("nthreads"),
                "cpu_percent": w.get("metrics", {}).get("cpu"),
                "rss_bytes": w.get("metrics", {}).get("memory"),
            }
            for address, w in info.items()
        }
        self.send(Workers(view, self.client.status))

    def serve(self) -> None:
        """Take the coordinator's messages until it says close, or goes away."""
        due = 0.0
        while True:
            readable, _, _ = select.select([self.conn.fileno(), self._wake_r], [], [], WORKERS_EVERY)
            if self._wake_r in readable:
                os.read(self._wake_r, 1 << 16)
            while True:
                try:
                    self.report(self.finished.get_nowait())
                except queue.Empty:
                    break
            if self.conn.fileno() in readable:
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    return
                if isinstance(msg, Close):
                    return
                self.handle(msg)
            if self.client is not None and time.monotonic() >= due:
                self.workers()
                due = time.monotonic() + WORKERS_EVERY

    def handle(self, msg: ToBridge) -> None:
        match msg:
            case Submit(key=key, task=task, part=part):
                self.submit(key, task, part)
            case Connect(workers=workers, address=address):
                self.connect(workers, address)
            case Probe(files=files, spec=spec):
                self.probe(files, spec)
            case Start(spec=spec, layout=layout, settings=settings, part_dir=part_dir):
                self.start(spec, layout, settings, part_dir)

    def close(self) -> None:
        try:
            if self.futures and self.client is not None:
                self.client.cancel(list(self.futures.values()), force=True)
        except Exception:
            pass
        self.futures.clear()
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass
        self.outbox.put(None)
        self.sender.join(timeout=10)


def _quiet_dask_logs() -> None:
    """Dask's own log lines (a lost scheduler's reconnect tracebacks, say) are not for our users:
    mpobs says what went wrong in one line. Its config gives some loggers levels of their own."""
    for name in ["distributed", *logging.Logger.manager.loggerDict]:
        if name.startswith("distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[1]))
    bridge = Bridge(conn)
    try:
        bridge.serve()
    except Exception as err:
        bridge.send(Failed(describe(err)))
    finally:
        bridge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
