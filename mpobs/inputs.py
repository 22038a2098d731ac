"""Tasks and the inputs they come from: a regular file, read by byte range (streams: mpobs.streams)."""

from __future__ import annotations

import errno
import mmap
import os
import sys
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

from mpobs.defaults import TASK_BYTES
from mpobs.errors import InputError

if TYPE_CHECKING:
    from mpobs.blocks import BlockStore


class _NotReady:
    def __repr__(self) -> str:
        return "NOT_READY"


#: What a source's plan yields when its next task is not read yet (a stream waiting for data).
NOT_READY: Any = _NotReady()


class Task(NamedTuple):
    """A run's unit of work: lines ``first_line ..`` (1-based, run-wide) of input number ``input``.

    Its bytes are either a byte range ``start .. end`` of the regular file at ``path``,
    which whoever runs it reads itself (the coordinator never touches them), or a block
    of decoded input: in slot ``slot`` of the executor's BlockStore, or carried in
    ``data`` (a block too big for a slot). ``file_line`` is the number of its first
    line within its input; ``nbytes`` the input bytes it accounts for (compressed
    bytes for a compressed input) when not ``end - start``.
    """

    index: int
    start: int
    end: int
    first_line: int
    lines: int
    path: str | None = None
    input: int = 0
    file_line: int = 1
    nbytes: int = -1
    slot: int = -1
    data: bytes | None = None
    where: tuple[Any, ...] | None = None  # a followed file's generation at the task's end (mpobs.follow)
    #: Calls that timed out in an earlier run of it (--call-timeout): (processor index, run-wide
    #: first line, lines, seconds). A line's call is not made again but is an error of that
    #: line; a batch call's lines are called one by one.
    timed_out: tuple[tuple[int, int, int, float], ...] = ()

    @property
    def last_line(self) -> int:
        return self.first_line + self.lines - 1

    @property
    def input_bytes(self) -> int:
        return self.end - self.start if self.nbytes < 0 else self.nbytes

    def describe(self) -> str:
        where = f"bytes {self.start}-{self.end}" if self.path is not None else f"a block of {self.end - self.start} bytes"
        return f"task {self.index} (lines {self.first_line}-{self.last_line}, {where})"

    def read(self, store: BlockStore | None = None) -> bytes | memoryview:
        if self.data is not None:
            return self.data
        if self.path is None:
            if store is None:
                raise RuntimeError(f"{self.describe()} is a block, and no block store was given")
            return store.get(self.slot, self.end - self.start)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, self.end - self.start, self.start)
        finally:
            os.close(fd)


class Piece:
    """What one input plans: a task but for its place in the run (index, run-wide line number)."""

    __slots__ = ("start", "end", "lines", "path", "nbytes", "slot", "data", "where")

    def __init__(self, start: int, end: int, lines: int, path: str | None = None, nbytes: int = -1, slot: int = -1,
                 data: bytes | None = None, where: tuple[Any, ...] | None = None) -> None:  # fmt: skip
        self.start, self.end, self.lines, self.path, self.nbytes = start, end, lines, path, nbytes
        self.slot, self.data, self.where = slot, data, where


class InputSource(ABC):
    """One input of a run: what it is, its pieces, and how far reading got.

    ``check`` refuses an input that cannot be read, before any work; ``pieces`` yields
    its pieces in order (lazily: reading overlaps with running), or NOT_READY while
    the next is not read yet. ``bytes_read`` and ``lines_read`` grow as
    it goes; ``damage`` is set when the input turned out unreadable part way (a corrupt
    compressed file): the pieces before it are good, and nothing follows.
    """

    given: str  # the name as given on the command line ("-" for standard input)
    name: str  # as records show it (the file's base name, "stdin")
    kind = "file"  # "file" or "stream"
    compression: str | None = None
    size: int | None = None  # bytes, when known before reading
    needs_store = False  # its pieces are blocks in the executor's BlockStore
    bytes_read = 0
    lines_read = 0
    damage: str | None = None

    @abstractmethod
    def check(self) -> None: ...

    @abstractmethod
    def pieces(self, task_bytes: int, store: BlockStore | None, wake: Callable[[], None]) -> Iterator[Any]: ...

    def is_file(self, path: str) -> bool:
        """Whether ``path`` names this input (so writing it would destroy it)."""
        return False

    def skip(self, offset: int, raw: int) -> None:
        """Begin at byte ``offset`` (decoded bytes, for a compressed input; ``raw`` of the input's own)."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume part way")

    def resume_from(self, pos: Any) -> None:
        """Begin where checkpoint position ``pos`` (``checkpoint.InputPosition``) stood."""
        self.skip(pos.offset, pos.raw)

    def close(self) -> None:
        """The run is over: stop reading."""


class FileSource(InputSource):
    """A regular file of plain text: split into byte ranges on line ends, which workers read themselves.

    ``path`` is where a worker opens it (for standard input redirected from a file, the
    coordinator's /proc/<pid>/fd/0: a worker's own fd 0 is not the input); ``start``
    where reading begins (standard input may already be part way).
    """

    def __init__(self, given: str, path: str, size: int, start: int = 0, name: str | None = None) -> None:
        self.given, self.path, self.size, self.start = given, path, size, start
        self.name = name or os.path.basename(given)

    def check(self) -> None:
        try:
            with open(self.path, "rb"):  # os.access says yes to root everywhere; only opening tells
                pass
        except OSError as err:
            why = "permission denied" if err.errno == errno.EACCES else err.strerror
            raise InputError(f"input {self.given!r}: {why}") from err

    def is_file(self, path: str) -> bool:
        try:
            return os.path.samefile(path, self.path)
        except OSError:
            return False

    def skip(self, offset: int, raw: int) -> None:
        self.start = self.bytes_read = offset

    def pieces(self, task_bytes: int = TASK_BYTES, store: BlockStore | None = None,
               wake: Callable[[], None] = lambda: None) -> Iterator[Piece]:  # fmt: skip
        """Byte ranges that end just after a "\\n" (the last one at the end of the file).

        Lazy: a task's first line number needs the newlines before it counted, so
        counting overlaps with the workers' processing of earlier tasks. Counts on a
        read-only mapping (``_newline_counter``), and gives each counted RELEASE_BYTES back
        to the kernel (MADV_DONTNEED), so the coordinator's RSS grows with neither the
        input nor the task size.
        """
        size = self.size or 0
        if size <= self.start:
            return
        count_newlines = _newline_counter(size - self.start)
        page = mmap.PAGESIZE
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
            start, released = self.start, self.start // page * page
            last_is_newline = mm[size - 1] == 0x0A
            while start < size:
                end = size
                if start + task_bytes < size:
                    nl = mm.find(b"\n", start + task_bytes - 1)
                    end = size if nl == -1 else nl + 1
                newlines = 0
                for lo in range(start, end, RELEASE_BYTES):
                    hi = min(end, lo + RELEASE_BYTES)
                    newlines += count_newlines(mm, lo, hi)
                    whole = hi // page * page
                    if whole > released and hasattr(mm, "madvise"):
                        mm.madvise(mmap.MADV_DONTNEED, released, whole - released)
                        released = whole
                lines = newlines + (1 if end == size and not last_is_newline else 0)
                self.bytes_read += end - start
                self.lines_read += lines
                yield Piece(start, end, lines, self.path)
                start = end


#: Planning gives the mapping's pages back every this many bytes: a big task (Dask's are
#: 16 MiB) would otherwise add its size to the coordinator's peak RSS.
RELEASE_BYTES = 1 << 20
#: From this size on, planning counts newlines with numpy (imported for it).
NUMPY_PLAN_BYTES = 256 << 20


def _newline_counter(size: int) -> Callable[[mmap.mmap, int, int], int]:
    """How to count the newlines of a range of the mapping, for an input of ``size`` bytes.

    Measured on the 147 MB bench log: numpy on the mapping (no copy) 0.034 s,
    ``bytes.count`` on a copy of each range 0.073 s; importing numpy costs 50-70 ms.
    So numpy for inputs from NUMPY_PLAN_BYTES on, or when something imported it already.
    """
    if size < NUMPY_PLAN_BYTES and "numpy" not in sys.modules:
        return lambda mm, start, end: mm[start:end].count(b"\n")
    import numpy as np

    def count(mm: mmap.mmap, start: int, end: int) -> int:
        view = np.frombuffer(mm, dtype=np.uint8, count=end - start, offset=start)
        try:
            return int(np.count_nonzero(view == 0x0A))
        finally:
            del view  # the mapping cannot close while a view of it lives

    return count
