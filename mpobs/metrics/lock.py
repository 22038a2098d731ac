"""The stats segment's lock: one process-shared lock whose holder's pid is kept in the segment.

A process killed while holding the lock would block every other one. With the
holder's pid in ``system[lock_holder]`` (``mpobs.metrics.segment`` says where), the
coordinator sees that the holder is dead and releases the lock for it
(``Unsticker``, called while the lock cannot be had).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Seconds a process waits for the lock before it asks ``on_stuck`` for help.
LOCK_WAIT = 0.5
#: Seconds the lock may stay taken by nobody known, with no worker alive, before it is forced free.
UNKNOWN_HOLDER_WAIT = 3.0


class HolderLock:
    """The lock, and the slot ``_flat[_holder]`` that names its holder (mixed into StatsSegment)."""

    lock: Any
    _flat: memoryview
    _holder: int
    pid: int
    on_stuck: Callable[[], None] | None

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock, with this process's pid in ``lock_holder`` while it does.

        ``on_stuck`` (the coordinator sets one) is called while the lock cannot be had.
        """
        lock = self.lock
        while not lock.acquire(timeout=LOCK_WAIT):
            if self.on_stuck is not None:
                self.on_stuck()
        self._flat[self._holder] = self.pid
        try:
            yield
        finally:
            self._flat[self._holder] = 0
            lock.release()

    def lock_holder(self) -> int:
        return self._flat[self._holder]

    def force_release(self) -> None:
        """Release a lock nobody alive can hold (see ``Unsticker``)."""
        self._flat[self._holder] = 0
        try:
            self.lock.release()
        except ValueError:
            pass  # it was free after all

    def release_for(self, dead_pids: set[int]) -> bool:
        """Release the lock if one of ``dead_pids`` (processes known dead) holds it."""
        holder = self._flat[self._holder]
        if holder and holder in dead_pids:
            self._flat[self._holder] = 0
            self.lock.release()
            return True
        return False


class Unsticker:
    """The coordinator's ``on_stuck``: free the lock if a dead worker or dashboard holds it.

    ``dead()``: pids of processes of the run known dead; ``any_alive()``: whether a
    process that takes the lock (a worker) is alive.
    """

    def __init__(self, seg: HolderLock, dead: Callable[[], set[int]], any_alive: Callable[[], bool]) -> None:
        self.seg, self.dead, self.any_alive = seg, dead, any_alive
        self._since = self._last = 0.0

    def __call__(self) -> None:
        seg = self.seg
        dead = self.dead()
        if dead and seg.release_for(dead):
            return
        # A process killed between taking the lock and writing its pid leaves no holder
        # to check. When no worker is left alive and the lock stays taken for 3 s, only
        # such a dead process can hold it (the dashboard holds it for microseconds).
        now = time.monotonic()
        if now - self._last > 2 * LOCK_WAIT:
            self._since = now
        self._last = now
        if not self.any_alive() and seg.lock_holder() == 0 and now - self._since >= UNKNOWN_HOLDER_WAIT:
            seg.force_release()
