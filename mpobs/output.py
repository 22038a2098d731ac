"""Joining the workers' output parts, in task order, into the output file or stdout."""

from __future__ import annotations

import os
import stat
import sys

from mpobs.errors import InputError


class OutputClosed(Exception):
    """The reader of our stdout went away (``mpobs process big.log | head``)."""


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
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
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
