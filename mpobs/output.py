"""Joining the workers' output parts, in task order, into the output file or stdout."""

from __future__ import annotations

import os
import stat
import sys
import threading

from mpobs.errors import InputError


class OutputClosed(Exception):
    """The reader of our stdout went away (``mpobs process big.log | head``)."""


def open_replacing(path: str) -> int:
    """Open ``path`` to write it from empty: a new file in place of an old one where that is safe.

    Truncating a non-empty file makes ext4 (its auto_da_alloc heuristic) write the
    whole new file back to disk when it is closed: 55-75 ms for a 147 MB output on
    the benchmark machine, on every run that overwrites its output, plus 15-30 ms to
    free the old blocks. So an old output that is a plain file of ours with one link
    is unlinked and created again with the same permissions, and its blocks are
    freed by a thread. Anything else (a symlink, a hard link, a device, someone
    else's file, a folder we cannot change) is truncated as before. A program that
    still has the old file open keeps reading the old file.
    """
    flags = os.O_WRONLY | os.O_CREAT
    try:
        st = os.lstat(path)
    except OSError:
        return os.open(path, flags | os.O_TRUNC, 0o666)
    if not (stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid() and st.st_size):
        return os.open(path, flags | os.O_TRUNC, 0o666)
    try:
        old = os.open(path, getattr(os, "O_PATH", os.O_RDONLY))  # keeps the old blocks until the thread frees them
    except OSError:
        return os.open(path, flags | os.O_TRUNC, 0o666)
    try:
        os.unlink(path)
        fd = os.open(path, flags | os.O_EXCL, 0o600)
    except OSError:  # the folder is not ours to change, or someone created the file meanwhile
        os.close(old)
        return os.open(path, flags | os.O_TRUNC, 0o666)
    try:
        os.fchmod(fd, st.st_mode & 0o777)  # its permissions, never a set-id bit (writing clears those too)
    except OSError:
        pass
    threading.Thread(target=os.close, args=(old,), name="mpobs-free-old-output", daemon=True).start()
    return fd


class OutputJoiner:
    """Appends part files to one output; the kernel copies the bytes where it can."""

    def __init__(self, path: str | None) -> None:
        if path is None:
            try:
                sys.stdout.flush()
                self.fd = sys.stdout.fileno()
                os.fstat(self.fd)
            except (AttributeError, ValueError, OSError) as err:  # started with stdout closed (>&-)
                raise InputError("stdout is closed; give an output file with --output") from err
            self.own = False
        else:
            self.fd = open_replacing(path)
            self.own = True
        self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        self.bytes_written = 0

    def append(self, part: str) -> None:
        with open(part, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                self._copy(f.fileno(), size)
            except BrokenPipeError as err:
                raise OutputClosed from err
        self.bytes_written += size

    def _copy(self, src: int, size: int) -> None:
        left = size
        offset = 0
        if self.regular and hasattr(os, "copy_file_range"):
            try:
                while left:
                    n = os.copy_file_range(src, self.fd, left)
                    if n == 0:
                        break
                    left -= n
                    offset += n
            except OSError:
                pass  # e.g. EXDEV on some kernels: fall through to sendfile
        if left:
            try:
                while left:
                    n = os.sendfile(self.fd, src, offset, left)
                    if n == 0:
                        break
                    left -= n
                    offset += n
            except BrokenPipeError:
                raise
            except OSError:
                pass
        while left:  # plain copy: last resort
            chunk = os.pread(src, min(left, 1 << 20), offset)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                w = os.write(self.fd, view)
                view = view[w:]
            left -= len(chunk)
            offset += len(chunk)

    def close(self) -> None:
        if self.own:
            os.close(self.fd)
