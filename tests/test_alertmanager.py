"""--alertmanager with a real Alertmanager (Debian prometheus-alertmanager), and with none answering.

The real one routes to a webhook in the test, so what Alertmanager itself notifies (firing,
then resolved) is seen, besides its /api/v2/alerts.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import append, fn_config, free_port, get_json, lines_out, stop_following, wait_for

FNS = "def f(line):\n    if 'BAD' in line:\n        raise ValueError('bad line')\n    return line\n"
RULES = """\
groups:
  - name: test
    rules:
      - alert: ErrorsSeen
        expr: sum by (processor) (mpobs_processor_errors_total) > 0
        labels: {severity: page}
        annotations: {summary: "processor {{ $labels.processor }} has errors"}
"""


def _lines(start: int, count: int) -> str:
    return "".join(f"line {i} {'BAD' if i % 10 == 0 else 'ok'}\n" for i in range(start, start + count))


class Hook:
    """A webhook receiver on 127.0.0.1: the notifications Alertmanager sends."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def statuses(self, name: str) -> list[str]:
        return [a["status"] for n in self.received for a in n["alerts"] if a["labels"]["alertname"] == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, Hook]]:
    exe = shutil.which("prometheus-alertmanager")
    assert exe, "Debian prometheus-alertmanager is not installed (scripts/setup.sh --test installs it)"
    hook = Hook()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route: {receiver: hook, group_by: [alertname], group_wait: 1s, group_interval: 1s, repeat_interval: 1h}\n"
        f"receivers: [{{name: hook, webhook_configs: [{{url: '{hook.url}', send_resolved: true}}]}}]\n"
    )
    port = free_port()
    with open(tmp_path / "alertmanager.log", "wb") as log:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.path={tmp_path / 'am'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()  # it could not start
            return get_json(f"{url}/api/v2/status")[0] == 200

        wait_for(up, 30, interval=0.2, what="Alertmanager")
        yield url, hook
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        hook.close()


def _follow(tmp_path: Path, alertmanager_url: str, *extra: str, rules: str = RULES) -> subprocess.Popen[bytes]:
    config = fn_config(tmp_path, "amfns", FNS, [{"type": "python", "id": "f", "function": "amfns:f"}])
    (tmp_path / "rules.yml").write_text(rules)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpobs",
            "process",
            str(tmp_path / "app.log"),
            "-F",
            "-c",
            str(config),
            "-w",
            "2",
            "-o",
            str(tmp_path / "out"),
            "-q",
            "--alerts",
            str(tmp_path / "rules.yml"),
            "--alerts-interval",
            "0.2",
            "--alertmanager",
            alertmanager_url,
            *extra,
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _am_alerts(url: str, name: str) -> list[dict[str, Any]]:
    return [a for a in get_json(f"{url}/api/v2/alerts")[1] if a["labels"]["alertname"] == name]


def _seconds_left(alert: dict[str, Any]) -> float:
    ends = datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00"))
    return (ends - datetime.now(timezone.utc)).total_seconds()


def test_a_real_alertmanager_receives_the_alert_then_its_resolution(
    tmp_path: Path, alertmanager: tuple[str, Hook]
) -> None:
    """Errors for a while, then none: firing, then resolved while the run goes on, in Alertmanager
    and in the notifications it sends."""
    url, hook = alertmanager
    log = tmp_path / "app.log"
    log.write_text(_lines(0, 200))
    rules = RULES.replace(
        "expr: sum by (processor) (mpobs_processor_errors_total) > 0",
        "expr: sum by (processor) (increase(mpobs_processor_errors_total[2s])) > 0",
    )
    proc = _follow(tmp_path, url, rules=rules)
    written = [200]

    def errors_until_notified() -> bool:  # new errors keep the condition true until Alertmanager notified it
        append(log, _lines(written[0], 50).encode())
        written[0] += 50
        return "firing" in hook.statuses("ErrorsSeen")

    try:
        wait_for(errors_until_notified, 30, interval=0.3, what="Alertmanager's firing notification")
        (alert,) = _am_alerts(url, "ErrorsSeen")
        assert alert["labels"] == {"alertname": "ErrorsSeen", "processor": "f", "severity": "page"}
        assert alert["annotations"] == {"summary": "processor f has errors"}
        assert alert["status"]["state"] == "active"
        # While firing it is valid for minutes (resent every 60 s), so only a resolution ends it soon.
        assert _seconds_left(alert) > 120
        # No new errors: the condition ends while the run goes on, and the resolution reaches Alertmanager.
        wait_for(lambda: not _am_alerts(url, "ErrorsSeen"), 30, interval=0.2, what="the alert resolved in Alertmanager")
        wait_for(lambda: hook.statuses("ErrorsSeen")[-1] == "resolved", 30, what="the resolved notification")
    finally:
        err = stop_following(proc)
    assert proc.returncode == 0, err
    assert 'alert ErrorsSeen{processor="f",severity="page"} resolved after' in err, err
    assert "still firing" not in err and "cannot post" not in err, err


def test_the_alert_that_ends_a_run_reaches_the_receiver_as_firing(
    tmp_path: Path, alertmanager: tuple[str, Hook], cli: Any
) -> None:
    """--fail-on-alert: the run ends (exit 4) with its alert firing; Alertmanager keeps it firing (its
    endsAt minutes away) and notifies it as firing, even though the run ended within its group_wait."""
    url, hook = alertmanager
    log = tmp_path / "app.log"
    log.write_text(_lines(0, 20_000))
    config = fn_config(tmp_path, "amfns", FNS, [{"type": "python", "id": "f", "function": "amfns:f"}])
    (tmp_path / "rules.yml").write_text(RULES)
    m = tmp_path / "m.json"
    res = cli(
        "process",
        str(log),
        "-c",
        str(config),
        "-w",
        "2",
        "-o",
        str(tmp_path / "out"),
        "-q",
        "--alerts",
        str(tmp_path / "rules.yml"),
        "--alerts-interval",
        "0.2",
        "--alertmanager",
        url,
        "--fail-on-alert",
        "ErrorsSeen",
        "--save-metrics",
        str(m),
    )
    err = res.stderr.decode()
    assert res.returncode == 4, err
    wait_for(lambda: "firing" in hook.statuses("ErrorsSeen"), 30, what="Alertmanager's firing notification")
    assert 'alert ErrorsSeen{processor="f",severity="page"} still firing when the run ended' in err, err
    assert "Alertmanager resolves it at" in err and "resolved after" not in err and "cannot post" not in err, err
    (alert,) = _am_alerts(url, "ErrorsSeen")  # still active: it expires on its own, minutes later
    assert alert["status"]["state"] == "active" and 180 < _seconds_left(alert) <= 240
    saved = json.loads(m.read_text())["alerts"]
    assert [a["state"] for a in saved["alerts"]] == ["firing"] and saved["events"][-1]["event"] == "still_firing"
    assert "resolved" not in hook.statuses("ErrorsSeen")


class Post:
    """One connection to ``Stuck``: ``closed`` once the client gives up; ``released`` once it is no longer held."""

    def __init__(self, held: bool) -> None:
        self.closed, self.released = threading.Event(), threading.Event()
        if not held:
            self.released.set()


class Stuck:
    """An 'Alertmanager' that accepts connections and never answers (a hung server).

    ``posts`` holds one Post per connection. A post is held until the test releases it: the server
    sends it one more byte of a header that never ends every 0.2 s, so that the client's 2 s timeout
    (on each read) cannot expire however long the test takes to look. Released (or when ``hold`` is
    False), it gets nothing more, and the client gives up 2 s later, as with a server that hangs.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.posts: list[Post] = []
        self.hold = True
        self._held: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            post = Post(self.hold)
            self._held.append(conn)
            self.posts.append(post)
            threading.Thread(target=self._hold, args=(conn, post), daemon=True).start()

    @staticmethod
    def _hold(conn: socket.socket, post: Post) -> None:
        conn.settimeout(0.2)
        head = b"HTTP/1.1 200 OK\r\nX-Hold: "
        try:
            while True:
                try:
                    if not conn.recv(65536):
                        break  # the client gave up
                except TimeoutError:
                    pass
                if not post.released.is_set():
                    conn.sendall(head or b"a")
                    head = b""
        except OSError:
            pass
        post.closed.set()

    def release_all(self) -> None:
        """From now on no post is held: each hangs until the client's timeout."""
        self.hold = False
        for post in self.posts:
            post.released.set()

    def close(self) -> None:
        self.sock.close()
        for s in self._held:
            s.close()


@pytest.mark.parametrize("kind", ["refused", "stuck"])
def test_an_absent_or_hung_alertmanager_does_not_hold_the_run_and_is_reported_once(tmp_path: Path, kind: str) -> None:
    stuck = Stuck() if kind == "stuck" else None
    url = stuck.url if stuck else f"http://127.0.0.1:{free_port()}"
    port = free_port()
    (tmp_path / "app.log").write_text("".join(f"line {i} ok\n" for i in range(200)))
    out = tmp_path / "out"
    proc = _follow(tmp_path, url, "--dashboard", "--dashboard-port", str(port), "--linger", "0")
    try:

        def posts_failed(n: int) -> bool:
            doc = get_json(f"http://127.0.0.1:{port}/stats")[1].get("alerts") or {}
            return (doc.get("alertmanager") or {}).get("failed_posts", 0) >= n

        wait_for(lambda: lines_out(out) == 200, 30, what="the first lines")
        for r in range(3):  # the first errors fire the alert (a post), later rounds meet the retries
            seen = len(stuck.posts) if stuck else 0
            append(tmp_path / "app.log", _lines(200 + 600 * r, 300).encode())
            if stuck:  # a new post, hung until the test releases it: the run must not wait for it
                wait_for(lambda seen=seen: len(stuck.posts) > seen, 30, interval=0.02, what="a new post")
                hung = stuck.posts[-1]
            append(tmp_path / "app.log", _lines(500 + 600 * r, 300).encode())
            ok = 200 + 540 * (r + 1)  # one line in ten is an error of f
            wait_for(lambda ok=ok: lines_out(out) == ok, 30, interval=0.02, what="the new lines in the output")
            if stuck:
                assert not hung.closed.is_set(), "the new lines came out only after the hung post gave up"
                hung.released.set()  # it times out now: a failed post, retried (the next round's post)
        if stuck:
            stuck.release_all()
        wait_for(lambda: posts_failed(3), 60, interval=0.2, what="a third failed post")
    finally:
        err = stop_following(proc)
        if stuck:
            stuck.close()
    assert proc.returncode == 0, err
    assert err.count("cannot post alerts") == 1, err
    assert "not delivered to" in err and "reachable again" not in err, err
    assert lines_out(out) == 1820 and "Traceback" not in err
