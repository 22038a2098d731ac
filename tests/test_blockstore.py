"""The block store on its own: slots that bound a run's input in memory, shared with forked workers."""

from __future__ import annotations

import mmap
import multiprocessing
import threading

import pytest

from mpobs.inputs.blockstore import BlockStore, StoreClosed
from tests.helpers import wait_for


@pytest.fixture(params=["in_memory", "shared_store"])
def store(request: pytest.FixtureRequest) -> BlockStore:
    """A store of 3 slots of 100 bytes (a shared one rounds its slots up to whole pages)."""
    made: BlockStore = getattr(BlockStore, request.param)(3, 100)
    return made


def test_slots_hold_their_blocks_apart(store: BlockStore) -> None:
    slots = [store.acquire() for _ in range(3)]
    assert sorted(slots) == [0, 1, 2]
    for s in slots:
        store.put(s, bytes([65 + s]) * store.slot_bytes)  # a full slot, up to its last byte
    for s in slots:
        got = store.get(s, store.slot_bytes)
        assert isinstance(got, memoryview) and bytes(got) == bytes([65 + s]) * store.slot_bytes
    store.put(1, b"short\n")
    assert bytes(store.get(1, 6)) == b"short\n"
    assert bytes(store.get(2, 3)) == b"CCC"  # the neighbours are untouched


def test_a_shared_store_has_whole_pages_and_an_in_memory_one_the_size_asked() -> None:
    shared, private = BlockStore.shared_store(3, 100), BlockStore.in_memory(3, 100)
    assert shared.shared and shared.slot_bytes == mmap.PAGESIZE
    assert BlockStore.shared_store(2, mmap.PAGESIZE + 1).slot_bytes == 2 * mmap.PAGESIZE
    assert not private.shared and private.slot_bytes == 100 and len(private.buf) == 300


def test_acquire_waits_for_a_release_and_gets_that_slot(store: BlockStore) -> None:
    for _ in range(3):
        store.acquire()
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(store.acquire()))
    waiter.start()
    try:
        waiter.join(0.2)
        assert waiter.is_alive() and got == []  # every slot is in flight: the reader waits
        store.release(1)
        waiter.join(10)
        assert got == [1]
    finally:
        store.close()
        waiter.join(10)


def test_close_wakes_a_waiting_reader_and_refuses_any_later_acquire(store: BlockStore) -> None:
    for _ in range(3):
        store.acquire()
    failed: list[BaseException] = []

    def reader() -> None:
        try:
            store.acquire()
        except StoreClosed as err:
            failed.append(err)

    waiter = threading.Thread(target=reader)
    waiter.start()
    store.close()
    waiter.join(10)
    assert not waiter.is_alive() and len(failed) == 1
    store.release(0)
    with pytest.raises(StoreClosed):  # even with a free slot: the run is ending
        store.acquire()


def test_forget_keeps_the_block_for_whoever_reads_it_next(store: BlockStore) -> None:
    slot = store.acquire()
    store.put(slot, b"kept\n" * 10)
    store.forget(slot)  # a worker is done with it; the task may yet run again from it
    assert bytes(store.get(slot, 50)) == b"kept\n" * 10


def _child_reads_and_writes(store: BlockStore, conn: multiprocessing.connection.Connection) -> None:
    conn.send(bytes(store.get(0, 12)))
    store.forget(0)
    store.put(1, b"from the child")
    conn.close()


def test_a_shared_store_is_seen_by_a_process_forked_after_it() -> None:
    store = BlockStore.shared_store(2, 64)
    store.put(0, b"from parent\n")
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_child_reads_and_writes, args=(store, theirs))
    child.start()
    try:
        assert wait_for(lambda: ours.poll(0.1), 30) and ours.recv() == b"from parent\n"  # no copy through a pipe
        child.join(30)
        assert child.exitcode == 0
        assert bytes(store.get(1, 14)) == b"from the child"
        assert bytes(store.get(0, 12)) == b"from parent\n"  # the child's forget gave back its pages only
    finally:
        if child.is_alive():
            child.kill()
            child.join()
