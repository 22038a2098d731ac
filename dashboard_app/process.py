"""Running the dashboard: options, binding its socket, its own process, and serving with waitress.

Imports nothing heavy at module level: ``mpobs process`` imports this module for
its options, and flask, waitress and psutil are only loaded by the process that
serves. The process is fed a segment's name, its layout and the run's RunMeta;
it knows nothing of the coordinator.
"""

from __future__ import annotations

import errno
import os
import queue as queue_mod
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from mpobs.defaults import DASHBOARD_QUEUE_MESSAGES, is_loopback
from mpobs.errors import DashboardError

#: Server threads; /stats answers in well under a millisecond, so a few are plenty.
THREADS = 4


@dataclass(frozen=True)
class DashboardOptions:
    """Where and how to serve; build with ``checked`` so a bad combination never starts a run."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    linger: float | None = None  # None: until Ctrl-C; 0: stop with the run

    @classmethod
    def checked(cls, host: str, port: int, token: str | None, linger: float | None) -> DashboardOptions:
        host = (host or "").strip()
        if not host:
            raise DashboardError("--dashboard-host must not be empty")
        if token is not None and not token.strip():
            token = None
        if not is_loopback(host) and not token:
            msg = (
                f"--dashboard-host {host!r} is not a loopback address; anyone who can reach it could read the run. "
                "Give a token (--dashboard-token or MPOBS_DASHBOARD_TOKEN) or bind to 127.0.0.1"
            )
            raise DashboardError(msg)
        if not 0 <= port <= 65535:
            raise DashboardError(f"--dashboard-port must be 0-65535, got {port}")
        if linger is not None and linger < 0:
            raise DashboardError(f"--linger must be >= 0, got {linger}")
        return cls(host, port, token, linger)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket, or a DashboardError that says why not (before any work starts)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise DashboardError(f"dashboard: cannot bind host {host!r}: {err.strerror}") from err
    last: OSError | None = None
    for family, socktype, proto, _, addr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(1024)
            sock.set_inheritable(True)
            return sock
        except OSError as err:
            sock.close()
            last = err
    assert last is not None
    if last.errno == errno.EADDRINUSE:
        msg = f"dashboard: port {port} on {host} is in use; choose another with --dashboard-port (0: any free port)"
    elif last.errno == errno.EACCES:
        msg = f"dashboard: permission denied binding {host}:{port} (ports below 1024 need privileges)"
    else:
        msg = f"dashboard: cannot bind host {host!r} port {port}: {last.strerror}"
    raise DashboardError(msg) from last


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def say(text: str) -> None:
    click.echo(f"mpobs: {text}", err=True)


class DashboardHandle:
    """The run's side of the dashboard process, once it serves the run (``DashboardProcess.serve_run``).

    ``on_gone`` is called once when the process is found dead or is stopped (the run
    stops forwarding records, and frees the stats lock if the process held it).
    """

    def __init__(self, process: DashboardProcess, on_gone: Callable[[int], None]) -> None:
        self.process, self.on_gone = process, on_gone
        self.opts, self.proc, self.queue, self.url = process.opts, process.proc, process.queue, process.url
        self.dead = False
        self._counters_at = self._executor_at = 0.0

    def publish_counters(
        self, counters: Callable[[], dict[str, dict[str, int]]], slowest: Callable[[], list[dict[str, Any]]]
    ) -> None:
        """Counter-processor keys and the slowest tasks live in the coordinator only: sent at most once
        a second (sorting many keys is not free); never blocks (the next commit sends them again)."""
        now = time.monotonic()
        if now - self._counters_at >= 1.0:
            self._counters_at = now
            self._publish(("counters", counters()))
            self._publish(("slowest", slowest()))

    def publish_alerts(self, doc: dict[str, Any]) -> None:
        """The --alerts rules' state after an evaluation; never blocks."""
        self._publish(("alerts", doc))

    def publish_executor(self, view: dict[str, Any]) -> None:
        """Where tasks run, as the executor sees it (a Dask cluster's workers); never blocks."""
        self._publish(("executor", view))

    def _publish(self, msg: tuple[str, Any]) -> None:
        if self.dead:
            return
        try:
            self.queue.put_nowait(msg)
        except (queue_mod.Full, ValueError, OSError):
            pass

    def dead_pids(self) -> set[int]:
        """Its process, if it has died (it may have held the stats lock)."""
        return set() if self.proc.is_alive() else {self.proc.pid}

    def poll(self, executor_view: Callable[[], dict[str, Any] | None] = lambda: None) -> None:
        """Warn once if the dashboard process died (the run goes on without it); send ``executor_view()``
        once a second (a cluster's view of its workers)."""
        now = time.monotonic()
        if not self.dead and now - self._executor_at >= 1.0:
            self._executor_at = now
            view = executor_view()
            if view is not None:
                self.publish_executor(view)
        if self.dead or self.proc.is_alive():
            return
        self.dead = True
        self.on_gone(self.proc.pid)
        say(f"warning: the dashboard process exited (code {self.proc.exitcode}); the run goes on without it")

    def publish_final(self, final_stats: dict[str, Any]) -> None:
        """The run is over: from now on /stats serves ``final_stats`` (with worker usage and rates as they go)."""
        self.poll()
        if not self.dead:
            try:
                self.queue.put(("final", final_stats), timeout=2)
            except (queue_mod.Full, ValueError, OSError):
                pass

    def finish(self, stop_requested: Callable[[], bool]) -> None:
        """Serve the final state for ``linger`` seconds (None: until Ctrl-C), then stop the process."""
        try:
            self.poll()
            if not self.dead:
                self._linger(stop_requested)
        finally:
            self.stop()

    def _linger(self, stop_requested: Callable[[], bool]) -> None:
        linger = self.opts.linger
        if linger == 0 or stop_requested():
            return
        if linger is None:
            say(f"dashboard still serving the final state at {self.url}; press Ctrl-C to stop")
            deadline = float("inf")
        else:
            say(f"dashboard serving the final state at {self.url} for {linger:g} s more (Ctrl-C stops it)")
            deadline = time.monotonic() + linger
        while time.monotonic() < deadline and not stop_requested() and self.proc.is_alive():
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill and join the process; never leaves it behind."""
        self.process.stop()
        self.dead = True
        self.on_gone(self.proc.pid)  # in case it died holding the stats lock


class DashboardProcess:
    """The dashboard's own process, forked before the run exists and handed it by ``serve_run``.

    ``mpobs process --dashboard`` forks it first thing (``prestart``), before the
    coordinator imports numpy: its own imports (Flask, waitress, psutil: about 0.15 s
    of CPU; it never imports numpy) then run on the core the coordinator's serial
    start-up leaves idle instead of on the workers' cores. The port is bound before
    the fork, so a port in use fails the command before anything else happens.
    """

    def __init__(self, ctx: Any, opts: DashboardOptions) -> None:
        import atexit
        from multiprocessing import resource_tracker

        self.opts = opts
        # The child attaches the segment, which registers it with a resource tracker: it must
        # share the coordinator's, or a tracker of its own unlinks the segment when it dies.
        resource_tracker.ensure_running()
        sock = bind_socket(opts.host, opts.port)
        self.url = url_of(sock, opts.host)
        self.lock = ctx.Lock()  # the stats segment's lock: made before the fork, so the child has it
        self.queue = ctx.Queue(DASHBOARD_QUEUE_MESSAGES)
        self._conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(
            target=_child_main,
            name="mpobs-dashboard",
            daemon=True,
            args=(sock, child_conn, self.lock, self.queue, opts, os.getpid()),
        )
        # Before multiprocessing's own exit handler, which would SIGTERM it (ignored) and wait
        # forever: whatever path leaves this process (an error before the run, Ctrl-C), it is killed.
        atexit.register(self.stop)
        try:
            self.proc.start()
        finally:
            sock.close()  # the child holds its own copy; the port goes with the child
            child_conn.close()

    def serve_run(self, seg_name: str, layout: Any, meta: Any, on_gone: Callable[[int], None]) -> DashboardHandle:
        """Hand the process the run's segment (name and ``segment.Layout``) and RunMeta; from now on it serves them."""
        try:
            self._conn.send((seg_name, layout, meta))
        except OSError:
            pass  # it died while starting: the handle's poll() says so, and the run goes on
        self._conn.close()
        hint = " (open it once with ?token=<your token>)" if self.opts.token else ""
        say(f"dashboard at {self.url}{hint}")
        return DashboardHandle(self, on_gone)

    def stop(self) -> None:
        """Kill and reap the process, whatever it is doing (it has nothing to flush); safe to call again."""
        self._conn.close()
        if self.proc.pid is None:
            return  # never started
        if self.proc.is_alive():
            self.proc.kill()  # it ignores SIGTERM (see _child_main) and has nothing to flush
        self.proc.join(3)
        self.queue.cancel_join_thread()  # anything still buffered is for a reader that is gone
        self.queue.close()


def prestart(opts: DashboardOptions) -> DashboardProcess:
    """``mpobs process``: fork the dashboard's process now, before the rest of mpobs is imported."""
    import multiprocessing

    return DashboardProcess(multiprocessing.get_context("fork"), opts)


def _watch_parent(parent_pid: int) -> None:
    from mpobs.lifeline import die_with_parent

    die_with_parent(parent_pid)

    def check() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=check, name="mpobs-parent-watch", daemon=True).start()


def _child_main(sock: socket.socket, conn: Any, lock: Any, q: Any, opts: DashboardOptions, parent_pid: int) -> None:
    """The dashboard process: import, wait for the run, attach its segment, pump the queue, serve."""
    # Signals to the process group (Ctrl-C, kill -TERM -PGID) are the coordinator's to
    # act on; it ends this process with SIGKILL: nothing here needs flushing (the
    # segment is the coordinator's, the rest is in memory).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the coordinator's: it reopens its output
    _watch_parent(parent_pid)
    # All that serving needs, imported now, while the coordinator is still starting up.
    import psutil  # noqa: F401  (the sampler's)
    import waitress  # noqa: F401

    import mpobs.metrics.document  # noqa: F401  (the first /stats request's)
    from dashboard_app.app import create_app  # noqa: F401
    from dashboard_app.sources import LiveSource
    from mpobs.metrics.segment import StatsSegment

    try:
        seg_name, layout, meta = conn.recv()
    except (EOFError, OSError):
        os._exit(0)  # the run never started
    conn.close()
    seg = StatsSegment.attach(seg_name, layout, lock)
    source = LiveSource(seg, meta)
    try:
        source.start(q)
        serve(source, sock, opts)
    except SystemExit:
        pass
    finally:
        source.close()
    os._exit(0)  # skip the fork-inherited atexit handlers of the coordinator


def serve(source: Any, sock: socket.socket, opts: DashboardOptions) -> None:
    """Serve ``source`` with waitress on the already listening ``sock`` until interrupted."""
    import logging

    import waitress

    from dashboard_app.app import create_app

    logging.getLogger("waitress").setLevel(logging.ERROR)
    # Hand the GIL over sooner than the 5 ms default: a request waiting behind the sampler or
    # another request is answered faster (measured with bench/stats_load.py on 2 busy cores).
    sys.setswitchinterval(0.001)
    loopback_only = is_loopback(opts.host) and not opts.token
    app = create_app(source, token=opts.token, loopback_hosts_only=loopback_only)
    # waitress.create_server is its documented API, missing from its stubs.
    server = waitress.create_server(  # type: ignore[attr-defined]
        app,
        sockets=[sock],
        threads=THREADS,
        ident="mpobs",
        max_request_body_size=64 * 1024,
        channel_timeout=30,
        connection_limit=200,
    )
    server.run()
