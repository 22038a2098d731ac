"""Tasks and the inputs they come from: a regular file, read by byte range (streams: mpobs.inputs.streams)."""

from __future__ import annotations

import errno
import mmap
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from mpobs.defaults import TASK_BYTES
from mpobs.errors import InputError

if TYPE_CHECKING:
    from mpobs.inputs.blockstore import BlockStore
    from mpobs.inputs.generation import Generation


class _NotReady:
    def __repr__(self) -> str:
        return "NOT_READY"


#: What a source's plan yields when its next task is not read yet (a stream waiting for data).
NOT_READY: Any = _NotReady()


class TimedOutCall:
    """A python processor's call that ran past --call-timeout in an earlier run of its task.

    Processor number ``processor`` was called on ``lines`` lines from run-wide line
    ``first_line`` (one line, or a batch call's lines) and was stopped after ``seconds``:
    its worker was killed (``LocalPool``). When the task runs again that call is not made:
    a line's call is an error of that line, a batch call's lines are called one by one.

    A plain class, not a named tuple: this module is imported at every run's start.
    Compared and hashed by value, as the tuple it replaces was (a Task compares as its fields).
    """

    __slots__ = ("first_line", "lines", "processor", "seconds")

    def __init__(self, processor: int, first_line: int, lines: int, seconds: float) -> None:
        self.processor, self.first_line, self.lines, self.seconds = processor, first_line, lines, seconds

    def _key(self) -> tuple[int, int, int, float]:
        return self.processor, self.first_line, self.lines, self.seconds

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TimedOutCall):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"TimedOutCall(processor={self.processor}, first_line={self.first_line}, lines={self.lines}, "
            f"seconds={self.seconds})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return TimedOutCall, self._key()


class Task(NamedTuple):
    """A run's unit of work: lines ``first_line ..`` (1-based, run-wide) of input number ``input``.

    Its bytes are either a byte range ``start .. end`` of the regular file at ``path``,
    which whoever runs it reads itself (the coordinator never touches them), or a block
    of decoded input: in slot ``slot`` of the executor's BlockStore, or carried in
    ``data`` (a block too big for a slot). ``file_line`` is the number of its first
    line within its input; ``nbytes`` the input bytes it accounts for (compressed
    bytes for a compressed input) when not ``end - start``.
    """

    # The task's number: it shadows tuple.index, which nothing calls on a Task.
    index: int  # type: ignore[assignment]
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
    where: Generation | None = None  # a followed file's generation, at the task's end
    #: Calls that timed out in an earlier run of it (--call-timeout).
    timed_out: tuple[TimedOutCall, ...] = ()

    @property
    def last_line(self) -> int:
        return self.first_line + self.lines - 1

    @property
    def input_bytes(self) -> int:
        return self.end - self.start if self.nbytes < 0 else self.nbytes

    def describe(self) -> str:
        where = (
            f"bytes {self.start}-{self.end}" if self.path is not None else f"a block of {self.end - self.start} bytes"
        )
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

    __slots__ = ("data", "end", "lines", "nbytes", "path", "slot", "start", "where")

    def __init__(
        self,
        start: int,
        end: int,
        lines: int,
        path: str | None = None,
        nbytes: int = -1,
        slot: int = -1,
        data: bytes | None = None,
        where: Generation | None = None,
    ) -> None:
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

    def pieces(
        self, task_bytes: int = TASK_BYTES, store: BlockStore | None = None, wake: Callable[[], None] = lambda: None
    ) -> Iterator[Piece]:
        """Byte ranges that end just after a "\\n" (the last one at the end of the file).

        Lazy: a task's first line number needs the newlines before it counted, so
        counting overlaps with the workers' processing of earlier tasks. Reads a task's
        end and counts its newlines with ``_NewlineCounter``.
        """
        size = self.size or 0
        if size <= self.start:
            return
        with open(self.path, "rb") as f, _NewlineCounter(f.fileno(), size, size - self.start) as count:
            start = self.start
            last_is_newline = os.pread(f.fileno(), 1, size - 1) == b"\n"
            while start < size:
                end = size if start + task_bytes >= size else count.line_end(start + task_bytes - 1)
                lines = count(start, end) + (1 if end == size and not last_is_newline else 0)
                self.bytes_read += end - start
                self.lines_read += lines
                yield Piece(start, end, lines, self.path)
                start = end


#: From this size on, planning counts newlines with numpy (imported for it).
NUMPY_PLAN_BYTES = 256 << 20
#: Without numpy, planning reads the input this many bytes at a time into one buffer.
COUNT_BYTES = 256 << 10
#: With numpy, planning gives the mapping's pages back every this many bytes: a big task
#: (Dask's are 16 MiB) would otherwise add its size to the coordinator's peak RSS.
RELEASE_BYTES = 1 << 20


class _NewlineCounter:
    """Counts the newlines of byte ranges of a file of ``size`` bytes (``todo`` of them to plan).

    Measured on the 147 MB bench log: numpy on a mapping of the file (no copy) 0.034 s,
    ``bytes.count`` 0.07-0.1 s; importing numpy costs 50-70 ms. So numpy for inputs
    from NUMPY_PLAN_BYTES on, or when something imported it already. Without it, each
    COUNT_BYTES is read into one reused buffer and counted there: a copy of each range
    of a mapping (``mm[lo:hi]``, as before) was a new 1 MiB object each time, 256 fresh
    pages whose faults cost about 0.9 ms a MiB on the benchmark VM, while the workers
    wanted both cores. Either way the coordinator's RSS grows with neither the input
    nor the task size: the buffer is reused, and the mapping's pages are given back.
    """

    def __init__(self, fd: int, size: int, todo: int) -> None:
        self.fd, self.size = fd, size
        self.numpy = todo >= NUMPY_PLAN_BYTES or "numpy" in sys.modules
        self.buf = bytearray(0 if self.numpy else min(todo, COUNT_BYTES))
        self.mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if self.numpy else None
        self.released = 0  # with numpy: the mapping's pages before this are given back

    def __enter__(self) -> _NewlineCounter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.mm is not None:
            self.mm.close()

    def line_end(self, pos: int) -> int:
        """Just after the first "\\n" at or after ``pos``; the file's size if there is none."""
        step = 4096
        while pos < self.size:
            chunk = os.pread(self.fd, min(step, self.size - pos), pos)  # not past the size planned: it may grow
            if not chunk:
                break
            nl = chunk.find(b"\n")
            if nl >= 0:
                return pos + nl + 1
            pos += len(chunk)
            step = min(step * 4, COUNT_BYTES)  # a long line: bigger reads
        return self.size

    def __call__(self, start: int, end: int) -> int:
        if self.mm is None:
            buf, n, lo = self.buf, 0, start
            view = memoryview(buf)
            while lo < end:
                got = os.preadv(self.fd, [view[: min(len(buf), end - lo)]], lo)
                if got <= 0:
                    break  # the file shrank under us: the workers' reads tell
                n += buf.count(b"\n", 0, got)
                lo += got  # a short read (a network file system) goes on from where it stopped
            return n
        import numpy as np

        n, page = 0, mmap.PAGESIZE
        self.released = max(self.released, start // page * page)
        for lo in range(start, end, RELEASE_BYTES):
            hi = min(end, lo + RELEASE_BYTES)
            mapped = np.frombuffer(self.mm, dtype=np.uint8, count=hi - lo, offset=lo)
            try:
                n += int(np.count_nonzero(mapped == 0x0A))
            finally:
                del mapped  # the mapping cannot close while a view of it lives
            whole = hi // page * page
            if whole > self.released and hasattr(self.mm, "madvise"):
                self.mm.madvise(mmap.MADV_DONTNEED, self.released, whole - self.released)
                self.released = whole
        return n
