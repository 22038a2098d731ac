"""Blocks of decoded input waiting for their task to be in the output: a fixed set of slots.

A stream or a compressed file is read (and decoded) by the coordinator, cut at line
ends into blocks, and each block waits in a slot of a ``BlockStore`` until its task's
output is in the output; a task lost with its worker runs again from the same slot.
The number of slots bounds the memory a run's input takes, whatever its size: the
reader waits for a free slot (``acquire``).

The local pool's store is one anonymous shared mapping made before its workers
fork (``BlockStore.shared``), so a worker reads a block where it lies, with no copy
through a pipe and no name in /dev/shm to leak; an executor that ships bytes to
its workers (the test executor, a cluster) uses ``BlockStore.in_memory``.
"""

from __future__ import annotations

import mmap
import threading


class StoreClosed(Exception):
    """The run is ending: no block will be taken any more."""


class BlockStore:
    """``slots`` slots of ``slot_bytes`` bytes each; ``acquire`` waits for a free one."""

    def __init__(self, slots: int, slot_bytes: int, buf: mmap.mmap | bytearray) -> None:
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.buf = buf
        self.view = memoryview(buf)
        self.shared = isinstance(buf, mmap.mmap)
        self._free = list(range(slots - 1, -1, -1))
        self._cond = threading.Condition()
        self._closed = False

    @classmethod
    def shared_store(cls, slots: int, slot_bytes: int) -> BlockStore:
        """Slots in an anonymous MAP_SHARED mapping: processes forked after this see them."""
        slot_bytes = -(-slot_bytes // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages, so one can be given back
        return cls(slots, slot_bytes, mmap.mmap(-1, slots * slot_bytes))

    @classmethod
    def in_memory(cls, slots: int, slot_bytes: int) -> BlockStore:
        return cls(slots, slot_bytes, bytearray(slots * slot_bytes))

    def acquire(self) -> int:
        """A free slot, once there is one. Raises StoreClosed when the run ends meanwhile."""
        with self._cond:
            while not self._free and not self._closed:
                self._cond.wait()
            if self._closed:
                raise StoreClosed
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()

    def put(self, slot: int, data: bytes | bytearray | memoryview) -> None:
        at = slot * self.slot_bytes
        self.view[at : at + len(data)] = data

    def get(self, slot: int, length: int) -> memoryview:
        at = slot * self.slot_bytes
        return self.view[at : at + length]

    def forget(self, slot: int) -> None:
        """This process is done with ``slot``: give its pages of the mapping back (a worker's RSS).

        The block stays in the shared mapping for the process that wrote it.
        """
        if self.shared and hasattr(self.buf, "madvise"):
            self.buf.madvise(mmap.MADV_DONTNEED, slot * self.slot_bytes, self.slot_bytes)

    def close(self) -> None:
        """Wake a reader waiting for a slot (it gets StoreClosed). The memory goes with the object."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
