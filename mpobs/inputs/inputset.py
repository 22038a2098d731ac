"""A run's inputs: what each given name is (file, stream, compressed), checked, and planned as one stream.

``open_inputs`` looks at every input before any work and refuses the run, naming
every input that cannot be read. ``InputSet`` chains the inputs' pieces into the
run's tasks in the order given: task indexes and line numbers (``{count}``) go on
across inputs, and each task knows its input and its line within it. It keeps the
inputs' rows of the stats segment (bytes and lines read, lines committed, state).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from mpobs.defaults import TASK_BYTES
from mpobs.errors import InputError
from mpobs.inputs.base import NOT_READY, FileSource, InputSource, Task
from mpobs.inputs.decoders import SNIFF_BYTES, sniff
from mpobs.inputs.streams import StreamSource
from mpobs.metrics.layout import COMPRESSIONS, INPUT_STATES, UNKNOWN

if TYPE_CHECKING:
    from mpobs.inputs.blockstore import BlockStore
    from mpobs.inputs.follow import FollowSource
    from mpobs.inputs.generation import Generation
    from mpobs.metrics.segment import StatsSegment


def open_inputs(given: Sequence[str], follow: bool = False) -> InputSet:
    """The sources for the input names given; any that cannot be read fails the run (all of them named).

    ``follow``: the last input is followed (``mpobs.inputs.follow``); the ones before it (its
    rotated generations, say) are read to their end first.
    """
    sources: list[InputSource] = []
    problems: list[str] = []
    if list(given).count("-") > 1:
        problems.append("standard input ('-') is given more than once")
    for k, name in enumerate(given):
        try:
            source = _followed(name) if follow and k == len(given) - 1 else classify(name)
            source.check()
            sources.append(source)
        except InputError as err:
            problems.append(str(err))
    if problems:
        if len(problems) == 1:
            raise InputError(problems[0])
        raise InputError(f"{len(problems)} inputs cannot be read:\n  " + "\n  ".join(problems))
    return InputSet(sources)


def classify(given: str) -> InputSource:
    """A regular file of plain text is read by byte range; a compressed file or a stream by blocks."""
    if given == "-":
        return _stdin()
    try:
        st = os.stat(given)
    except OSError as err:
        raise _unreadable(given, err) from err
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"input {given!r} is a directory, not a file")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        return StreamSource(given, given, "stream")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"input {given!r} is neither a regular file nor a stream")
    path = given
    if given.startswith(("/dev/", "/proc/")):  # /dev/stdin, /dev/fd/N: a worker's own fds differ; hold one open
        path = _held_path(given)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise _unreadable(given, err) from err
    try:
        compression = sniff(os.pread(fd, SNIFF_BYTES, 0))
    finally:
        os.close(fd)
    if compression is not None:
        return StreamSource(given, path, "file", compression, st.st_size)
    return FileSource(given, path, st.st_size)


def _followed(given: str) -> InputSource:
    from mpobs.inputs.follow import FollowSource

    source = classify(given)
    if not isinstance(source, FileSource) or given == "-":
        what = (
            "standard input"
            if given == "-"
            else "a stream"
            if source.kind == "stream"
            else f"{source.compression} compressed"
        )
        raise InputError(f"--follow follows a growing file of text by its name; {given!r} is {what}")
    return FollowSource(given, source.path, source.size or 0)


def _unreadable(given: str, err: OSError) -> InputError:
    why = {errno.ENOENT: "no such file", errno.EACCES: "permission denied"}.get(
        err.errno or 0, err.strerror or str(err)
    )
    return InputError(f"input {given!r}: {why}")


def _held_path(given: str) -> str:
    try:
        fd = os.open(given, os.O_RDONLY)
    except OSError as err:
        raise _unreadable(given, err) from err
    return f"/proc/{os.getpid()}/fd/{fd}"


def _stdin() -> InputSource:
    try:
        st = os.fstat(0)
    except OSError as err:
        raise InputError("standard input ('-') is closed") from err
    if stat.S_ISREG(st.st_mode):  # `< file`: seekable, so the fast path, from where it stands
        start = os.lseek(0, 0, os.SEEK_CUR)
        compression = sniff(os.pread(0, SNIFF_BYTES, start))
        if compression is not None:
            return StreamSource("-", None, "file", compression, st.st_size - start, fd=0, name="stdin")
        return FileSource("-", f"/proc/{os.getpid()}/fd/0", st.st_size, start, name="stdin")
    if stat.S_ISDIR(st.st_mode):
        raise InputError("standard input ('-') is a directory")
    return StreamSource("-", None, "stream", fd=0, name="stdin")


class InputSet:
    """The run's inputs, planned as one stream of tasks (see the module docstring)."""

    def __init__(self, sources: list[InputSource]) -> None:
        self.sources = sources
        first = sources[0].name if sources else "-"
        self.name = first if len(sources) <= 1 else f"{first} (+{len(sources) - 1} more)"
        sizes = [s.size for s in sources]
        self.size: int | None = sum(s or 0 for s in sizes) if all(s is not None for s in sizes) else None
        self.needs_store = any(s.needs_store for s in sources)
        self.tasks_planned = self.lines_planned = 0
        self.damage: str | None = None
        self.seg: StatsSegment | None = None
        self._done_lines = [0] * len(sources)
        self._read_all = [False] * len(sources)
        # Where the output stands in each input: bytes (decoded, for a compressed one), and
        # its input bytes (compressed) that those account for: a checkpoint's positions.
        self._offset = [0] * len(sources)
        self._raw = [0] * len(sources)
        self._whole: list[bool] = [False] * len(sources)  # all of it is in the output (from a checkpoint)
        self._where: list[Generation | None] = [None] * len(sources)  # a followed input's, at the output's end
        self.stopped = False  # told to stop reading (a followed run being stopped): nothing more is planned
        self._wake_lock = threading.Lock()  # a reader's wake never writes into a closed (reused) fd
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def describe(self) -> list[dict[str, Any]]:
        """What /stats shows of each input, besides its live values (``RunMeta.inputs``)."""
        return [
            {
                "name": s.given,
                "kind": s.kind,
                "compression": s.compression,
                **({"follow": True} if getattr(s, "following", False) else {}),
            }
            for s in self.sources
        ]

    def is_file(self, path: str) -> bool:
        return any(s.is_file(path) for s in self.sources)

    def track(self, seg: StatsSegment) -> None:
        """Keep the inputs' rows of ``seg`` from now on."""
        self.seg = seg
        for k, s in enumerate(self.sources):
            seg.set_input(
                k, bytes_total=UNKNOWN if s.size is None else s.size, compression=COMPRESSIONS.index(s.compression)
            )

    # -- planning ------------------------------------------------------------
    def tasks(self, task_bytes: int = TASK_BYTES, store: BlockStore | None = None) -> Iterator[Any]:
        """Every input's pieces as tasks, in order; NOT_READY while a stream's next block is not read."""
        index, line = 0, 1 + sum(self._done_lines)
        for k, source in enumerate(self.sources):
            if self._whole[k]:  # a checkpoint has all of it in the output
                self._read_all[k] = True
                self._set(k, state="done", lines_read=source.lines_read, lines_done=self._done_lines[k])
                continue
            self._set(k, state="reading", lines_done=self._done_lines[k])
            file_line = 1 + self._done_lines[k]
            if self.stopped:
                return
            for piece in source.pieces(task_bytes, store, self.wake):
                if self.stopped and source.kind == "file" and not getattr(source, "following", False):
                    return  # a file planned here: stop at a task's end (a reader's blocks still come)
                if piece is NOT_READY:
                    yield NOT_READY
                    continue
                task = Task(
                    index,
                    piece.start,
                    piece.end,
                    line,
                    piece.lines,
                    piece.path,
                    k,
                    file_line,
                    piece.nbytes,
                    piece.slot,
                    piece.data,
                    piece.where,
                )
                index, line, file_line = index + 1, line + piece.lines, file_line + piece.lines
                self.tasks_planned += 1
                self.lines_planned += piece.lines
                self._set(
                    k,
                    bytes_read=source.bytes_read,
                    lines_read=source.lines_read,
                    compression=COMPRESSIONS.index(source.compression),
                )
                yield task
            self._read_all[k] = True
            self._set(k, bytes_read=source.bytes_read, lines_read=source.lines_read)
            if source.damage is not None:
                rest = len(self.sources) - k - 1
                self.damage = source.damage + (f"; the {rest} input(s) after it were not read" if rest else "")
                self._set(k, state="damaged")
                return  # what follows the damage is not read: the output stays a prefix of the whole
            self._settle(k)

    def stop_reading(self) -> None:
        """Read no more: what was read is processed, and the plan ends (a followed run being stopped)."""
        self.stopped = True
        for source in self.sources:
            source.close()

    def refresh(self) -> None:
        """The followed inputs' live values (lag, rotations, last line), which change while nothing is planned."""
        for k, s in enumerate(self.sources):
            if getattr(s, "following", False):
                s = cast("FollowSource", s)
                self._set(
                    k,
                    following=0 if self.stopped else 1,
                    rotations=s.rotations,
                    lag_bytes=s.lag_bytes,
                    last_line_ms=int(s.last_line_at * 1000),
                )

    def committed(self, task: Task, store: BlockStore | None) -> None:
        """``task`` is in the output: its block's slot is free again; its input's lines count as done."""
        if task.slot >= 0 and store is not None:
            store.release(task.slot)
        k = task.input
        self._done_lines[k] += task.lines
        self._offset[k] = task.end
        self._raw[k] += task.input_bytes
        if task.where is not None:
            self._where[k] = task.where
        self._set(k, lines_done=self._done_lines[k])
        self._settle(k)

    # -- checkpoints -----------------------------------------------------------
    def resume(self, positions: list[Any]) -> None:
        """Start where a checkpoint stood (``checkpoint.InputPosition`` per input): an input it has
        whole is not read again; the one it stopped in is read from there on."""
        for k, (source, pos) in enumerate(zip(self.sources, positions)):
            self._done_lines[k], self._offset[k], self._raw[k] = pos.lines, pos.offset, pos.raw
            self._where[k] = pos.where
            source.lines_read = pos.lines
            if pos.done:
                self._whole[k] = True
            else:
                source.resume_from(pos)

    def positions(self) -> list[dict[str, Any]]:
        """Per input, what of it is in the output now: bytes, input bytes, lines, and whether all of it is."""
        return [
            {
                "offset": self._offset[k],
                "raw": self._raw[k],
                "lines": self._done_lines[k],
                "where": self._where[k],
                "done": not getattr(s, "following", False)
                and (
                    self._whole[k] or (self._read_all[k] and s.damage is None and self._done_lines[k] == s.lines_read)
                ),
            }
            for k, s in enumerate(self.sources)
        ]

    def _settle(self, k: int) -> None:
        source = self.sources[k]
        if self._read_all[k] and source.damage is None:
            self._set(k, state="done" if self._done_lines[k] == source.lines_read else "read")

    def _set(self, k: int, state: str | None = None, **values: int) -> None:
        if self.seg is not None:
            if state is not None:
                values["state"] = INPUT_STATES.index(state)
            self.seg.set_input(k, **values)

    # -- waking the coordinator ----------------------------------------------
    def wake(self) -> None:
        """A reader has a block (or ended): the coordinator's wait returns (``waitable``)."""
        with self._wake_lock:
            if self._wake_w < 0:
                return  # the run is over
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # full: it wakes anyway

    def waitable(self) -> int:
        return self._wake_r

    def drain(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for source in self.sources:
            source.close()
        with self._wake_lock:
            if self._wake_w >= 0:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
