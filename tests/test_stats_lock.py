"""The stats lock on its own: who holds it, freeing it for a dead holder, and real processes sharing it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mpobs.metrics.lock as lock_mod
from mpobs.metrics.layout import Layout
from mpobs.metrics.lock import Unsticker
from mpobs.metrics.segment import StatsSegment
from tests.helpers import wait_for

CTX = multiprocessing.get_context("fork")
LAYOUT = Layout(("a", "b"), ("error",), 2)


@pytest.fixture
def seg() -> Iterator[StatsSegment]:
    """A real stats segment (shared memory) with a process-shared lock, unlinked at the end."""
    made = StatsSegment.create(LAYOUT, CTX.Lock())
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits for a stuck lock shortened from 0.5 s and 3 s, so that the tests take a fraction of a second."""
    monkeypatch.setattr(lock_mod, "LOCK_WAIT", 0.05)
    monkeypatch.setattr(lock_mod, "UNKNOWN_HOLDER_WAIT", 0.3)


def is_free(seg: StatsSegment) -> bool:
    """Whether nobody holds the lock (taken and given back at once if so)."""
    if seg.lock.acquire(timeout=0):
        seg.lock.release()
        return True
    return False


def test_the_holder_s_pid_is_there_while_it_holds_the_lock(seg: StatsSegment) -> None:
    assert seg.lock_holder() == 0
    with seg.held():
        assert seg.lock_holder() == os.getpid()
        assert not is_free(seg)
    assert seg.lock_holder() == 0 and is_free(seg)
    with pytest.raises(ZeroDivisionError), seg.held():
        _ = 1 / 0
    assert seg.lock_holder() == 0 and is_free(seg)  # given back when the body raises


def test_release_for_frees_only_a_lock_held_by_a_dead_pid(seg: StatsSegment) -> None:
    assert not seg.release_for({12345})  # free: nothing to do
    seg.lock.acquire()
    seg._flat[seg._holder] = 12345  # as a worker that then died would have left it
    assert not seg.release_for({999})
    assert not is_free(seg)
    assert seg.release_for({999, 12345})
    assert seg.lock_holder() == 0 and is_free(seg)


def test_force_release_of_a_free_lock_is_harmless(seg: StatsSegment) -> None:
    seg.force_release()
    assert is_free(seg)
    with seg.held():
        pass
    seg.lock.acquire()  # taken by nobody known
    seg.force_release()
    assert is_free(seg)


def _count(name: str, lock: Any, times: int, start: Any) -> None:
    seg = StatsSegment.attach(name, LAYOUT, lock)
    start.wait(30)
    for _ in range(times):
        seg.add_worker(0, tasks=1, lines=3)  # a read-modify-write of the shared block, under the lock
    seg.close()


def test_two_processes_adding_under_the_lock_lose_nothing(seg: StatsSegment) -> None:
    times = 20_000
    start = CTX.Event()
    procs = [CTX.Process(target=_count, args=(seg.name, seg.lock, times, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()  # both at once, so that they contend for the lock
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    worker = seg.snapshot().worker(0)
    assert (worker["tasks"], worker["lines"]) == (2 * times, 6 * times)
    assert seg.lock_holder() == 0


def _die_holding(name: str, lock: Any, with_pid: bool, ready: Any) -> None:
    seg = StatsSegment.attach(name, LAYOUT, lock)
    held = seg.held()  # kept: a context manager dropped at once would give the lock back as it goes
    if with_pid:
        held.__enter__()  # pid written, lock held
    else:
        lock.acquire()  # killed between taking the lock and writing its pid
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def dead_holder(seg: StatsSegment, with_pid: bool) -> int:
    """A process that took the lock and was killed holding it; its pid."""
    ready = CTX.Event()
    proc = CTX.Process(target=_die_holding, args=(seg.name, seg.lock, with_pid, ready))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL and ready.is_set()
    assert not is_free(seg)
    return proc.pid


def test_a_lock_held_by_a_dead_worker_is_freed_by_the_coordinator(seg: StatsSegment, quick: None) -> None:
    pid = dead_holder(seg, with_pid=True)
    assert seg.lock_holder() == pid
    asked: list[float] = []
    unsticker = Unsticker(seg, lambda: {pid}, lambda: True)  # other workers are alive: the pid tells

    def on_stuck() -> None:
        asked.append(time.monotonic())
        unsticker()

    seg.on_stuck = on_stuck
    seg.add_worker(1, tasks=1)  # waits, asks on_stuck, then goes on
    assert asked and seg.snapshot().worker(1)["tasks"] == 1
    assert seg.lock_holder() == 0 and is_free(seg)


def test_a_lock_taken_by_nobody_known_is_forced_free_only_when_no_worker_is_alive(
    seg: StatsSegment, quick: None
) -> None:
    dead_holder(seg, with_pid=False)
    assert seg.lock_holder() == 0
    alive = [True]
    unsticker = Unsticker(seg, set, lambda: alive[0])
    deadline = time.monotonic() + 3 * lock_mod.UNKNOWN_HOLDER_WAIT
    while time.monotonic() < deadline:  # a live worker may be the holder: never forced, however long
        unsticker()
        time.sleep(lock_mod.LOCK_WAIT)
    assert not is_free(seg)
    alive[0] = False
    took = time.monotonic()
    seg.on_stuck = unsticker
    seg.add_worker(0, tasks=1)  # no worker alive: forced free after UNKNOWN_HOLDER_WAIT of asking
    assert time.monotonic() - took >= lock_mod.UNKNOWN_HOLDER_WAIT
    assert seg.snapshot().worker(0)["tasks"] == 1 and is_free(seg)


def test_a_waiter_gets_the_lock_as_soon_as_a_live_holder_lets_it_go(seg: StatsSegment, quick: None) -> None:
    asked: list[int] = []
    seg.on_stuck = lambda: asked.append(1)
    got = threading.Event()
    with seg.held():
        waiter = threading.Thread(target=lambda: (seg.add_worker(0, lines=1), got.set()))
        waiter.start()
        wait_for(lambda: len(asked) >= 2, 30)  # it waits, asking for help now and then
        assert not got.is_set()
    waiter.join(30)
    assert got.is_set() and seg.snapshot().worker(0)["lines"] == 1
