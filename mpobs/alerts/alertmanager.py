"""Posting alerts to an Alertmanager (``--alertmanager URL``) without ever slowing the run.

``Notifier.send`` only appends a batch to a bounded queue; a thread of its own posts
batches to ``URL/api/v2/alerts`` (timeout ``TIMEOUT_S``) and retries a failed one with a
growing pause, so a slow or absent Alertmanager costs the run nothing. When the queue is
full the oldest batch goes (a later batch carries every alert that still fires). The
thread never writes to stderr (a worker forked while it held stderr's lock would hang):
``news()`` hands the coordinator what to say, once per change ("unreachable", "reachable
again"). ``close()`` gives the last batches (the resolutions) ``CLOSE_S`` to go out.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any

TIMEOUT_S = 2.0
QUEUE_BATCHES = 64
CLOSE_S = 3.0
RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class Notifier:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self._queue: deque[list[dict[str, Any]]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._news: list[str] = []
        self._down: str | None = None  # why the last post failed, until one succeeds
        self.sent = self.failed_posts = self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="mpobs-alertmanager", daemon=True)
        self._thread.start()

    def send(self, batch: list[dict[str, Any]]) -> None:
        """Queue one batch of alerts; never blocks."""
        with self._cond:
            if len(self._queue) >= QUEUE_BATCHES:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(batch)
            self._cond.notify()

    def news(self) -> list[str]:
        with self._cond:
            out, self._news = self._news, []
        return out

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "url": self.url,
                "sent": self.sent,
                "failed_posts": self.failed_posts,
                "dropped": self.dropped,
                "queued": len(self._queue),
                "down": self._down,
            }

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(CLOSE_S + TIMEOUT_S)
        with self._cond:
            if self._queue:
                self._news.append(
                    f"warning: {len(self._queue)} alert batch(es) not delivered to {self.url} "
                    f"({self._down or 'out of time'})"
                )

    def _run(self) -> None:
        failures = 0
        deadline = None
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                if self._closing and deadline is None:
                    deadline = time.monotonic() + CLOSE_S
                batch = self._queue[0]
            error = self._post(batch)
            with self._cond:
                if error is None:
                    if self._queue and self._queue[0] is batch:
                        self._queue.popleft()
                    self.sent += len(batch)
                    if self._down is not None:
                        self._news.append(f"Alertmanager at {self.url} reachable again")
                    self._down, failures = None, 0
                    continue
                self.failed_posts += 1
                if self._down is None:
                    self._news.append(
                        f"warning: cannot post alerts to {self.url}: {error}; the run goes on, "
                        "alerts are kept and retried"
                    )
                self._down = error
                pause = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                if deadline is not None and time.monotonic() + pause > deadline:
                    return
                self._cond.wait(pause)  # a close() wakes it: the last tries get CLOSE_S

    def _post(self, batch: list[dict[str, Any]]) -> str | None:
        body = json.dumps(batch).encode()
        req = urllib.request.Request(self.url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                resp.read()
            return None
        except urllib.error.HTTPError as err:
            return f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            return str(getattr(reason, "strerror", None) or reason)
