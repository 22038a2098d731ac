"""What signals ask of a run: stop now, stop following (finish what was read), reopen the output."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


class RunSignals:
    """Catches SIGINT, SIGTERM and SIGHUP for the life of a run; the run loop asks what came.

    - SIGINT / SIGTERM: stop (``stop`` holds the signal). Following a log, the first one
      only ends the reading (``stop_following``): a service being stopped finishes what it
      read and exits 0; a second one stops at once.
    - SIGHUP, with an output file: reopen it at the next task boundary (``take_reopen``;
      logrotate renamed it). With stdout a hangup ends the run, as it ends any program.
    """

    def __init__(self, follow: bool, reopens: bool, on_stop: Callable[[], None]) -> None:
        self.follow, self.reopens, self.on_stop = follow, reopens, on_stop
        self.stop: int | None = None
        self.stop_following: int | None = None
        self._reopen = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._stop)
            self._old[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._hangup if self.reopens else signal.SIG_DFL)
        except ValueError:
            pass  # not the main thread: the caller handles signals

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def take_reopen(self) -> bool:
        """Whether a SIGHUP came since the last call."""
        asked, self._reopen = self._reopen, False
        return asked

    def _stop(self, signum: int, frame: Any) -> None:
        if self.follow and self.stop_following is None:
            self.stop_following = signum
            return
        self.stop = signum  # a second one: stop now
        self.on_stop()  # e.g. a worker that dies now is not started again

    def _hangup(self, signum: int, frame: Any) -> None:
        self._reopen = True
