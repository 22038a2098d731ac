"""The output: workers' output in task order, written by them into our own file, or joined into stdout."""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Callable

from mpobs.errors import InputError, PathIOError


class OutputClosed(Exception):
    """The reader of our stdout went away (``mpobs process big.log | head``)."""


def check_writable(path: str, what: str, is_input: Callable[[str], bool] | None = None) -> None:
    """``path`` can be created or overwritten, and is not an input (writing it would destroy it)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"{what} {path!r} is a directory")
    if not os.path.isdir(folder):
        raise InputError(f"{what} {path!r}: folder {folder!r} does not exist")
    existed = os.path.exists(path)
    if existed and is_input is not None and is_input(path):
        raise InputError(f"{what} {path!r} is the input file; writing it would destroy the input")
    try:
        # os.access says yes to root everywhere; only opening tells (e.g. /proc, a read-only mount).
        with open(path, "ab"):
            pass
    except OSError as err:
        raise InputError(f"{what} {path!r}: cannot write it: {err.strerror}") from err
    if not existed:
        os.unlink(path)


def open_replacing(path: str) -> tuple[int, threading.Thread | None]:
    """Open ``path`` to write it from empty: a new file in place of an old one where that is safe.

    Truncating a non-empty file makes ext4 (its auto_da_alloc heuristic) write the
    whole new file back to disk when it is closed: 55-75 ms for a 147 MB output on
    the benchmark machine, on every run that overwrites its output, plus 15-30 ms to
    free the old blocks. So an old output that is a non-empty plain file of ours with
    one link and no extended attributes (ACLs) is replaced: a new file with its mode
    (never a set-id bit) and group is made next to it and renamed over it, so the
    path always names one of the two. Anything else (a symlink, a hard link, a device,
    someone else's file, a folder we cannot change, a group we cannot give) is
    truncated as before. A program that still has the old file open keeps the old file.

    Returns the descriptor, and the thread that frees the old file's blocks (or
    None): join it before forking, or the children hold the old file until they exit.
    """
    flags = os.O_WRONLY | os.O_CREAT
    try:
        st = os.lstat(path)
        replace = (
            stat.S_ISREG(st.st_mode)
            and st.st_nlink == 1
            and st.st_uid == os.geteuid()
            and st.st_size > 0
            and not _has_xattrs(path)
        )
    except OSError:
        replace = False
    if not replace:
        return os.open(path, flags | os.O_TRUNC, 0o666), None
    try:
        # Keeps the old file alive past the rename, so that freeing its blocks is the thread's work.
        old = os.open(path, getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW)
    except OSError:
        return os.open(path, flags | os.O_TRUNC, 0o666), None
    tmp = None
    try:
        now = os.fstat(old)
        if (now.st_dev, now.st_ino, now.st_nlink) != (st.st_dev, st.st_ino, 1):
            raise OSError("changed while we looked")
        folder, name = os.path.split(os.path.abspath(path))
        tmp = os.path.join(folder, f".{name}.mpobs-{os.getpid()}-{os.urandom(4).hex()}")
        fd = os.open(tmp, flags | os.O_EXCL, 0o600)
        try:
            os.fchown(fd, -1, st.st_gid)
            os.fchmod(fd, st.st_mode & 0o777)
            os.rename(tmp, path)
        except OSError:
            os.close(fd)
            raise
    except OSError:  # a folder we cannot write, a group we are not in, a race: truncate instead
        os.close(old)
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return os.open(path, flags | os.O_TRUNC, 0o666), None
    closer = threading.Thread(target=os.close, args=(old,), name="mpobs-free-old-output", daemon=True)
    closer.start()
    return fd, closer


def _has_xattrs(path: str) -> bool:
    try:
        return bool(os.listxattr(path, follow_symlinks=False))
    except (OSError, AttributeError):
        return True  # cannot tell: keep the file and truncate it


class OutputJoiner:
    """Appends part files to one output; the kernel copies the bytes where it can."""

    def __init__(self, path: str | None, resume: tuple[int, int] | None = None) -> None:
        """``resume``: (a descriptor of the output file at ``path``, its length), already cut to a checkpoint's."""
        self.path = path
        self.name = f"the output {path!r}" if path is not None else "standard output"  # for messages
        self.reopens = 0
        resume_at = None
        if path is not None and resume is not None:
            (self.fd, resume_at), self._closer = resume, None
            self.own = True
        elif path is None:
            try:
                sys.stdout.flush()
                self.fd = sys.stdout.fileno()
                os.fstat(self.fd)
            except (AttributeError, ValueError, OSError) as err:  # started with stdout closed (>&-)
                raise InputError("stdout is closed; give an output file with --output") from err
            self.own = False
            self._closer = None
        else:
            self.fd, self._closer = open_replacing(path)
            self.own = True
        self.regular = stat.S_ISREG(os.fstat(self.fd).st_mode)
        # Our own regular file: workers write their output into it themselves, at the
        # offsets the ordered output places them at (no part files, no copy). Stdout is joined here.
        self.direct = self.own and self.regular
        self.bytes_written = resume_at or 0  # the committed output, over every file it went into (see reopen)
        self.base = 0  # where in bytes_written the file open now starts

    @property
    def at(self) -> int:
        """The committed end in the file open now: where a direct output's next task goes."""
        return self.bytes_written - self.base

    def before_fork(self) -> None:
        """Wait until the replaced output's old file is closed, so that no child inherits it."""
        if self._closer is not None:
            self._closer.join()
            self._closer = None

    def write(self, data: bytes) -> None:
        """Append ``data`` (a task's output that came as bytes)."""
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, self.at) if self.direct else os.write(self.fd, view)
                view = view[n:]
                self.bytes_written += n
        except BrokenPipeError as err:
            raise OutputClosed from err
        except OSError as err:
            raise PathIOError(err, f"cannot write {self.name}") from err

    def append(self, part: str) -> None:
        """Append the part file ``part`` (a task's output a worker wrote)."""
        try:
            f = open(part, "rb")  # noqa: SIM115 - closed below
        except OSError as err:
            raise PathIOError(err, f"cannot read the part file {part!r}") from err
        with f:
            size = os.fstat(f.fileno()).st_size
            try:
                self._copy(f.fileno(), size)
            except BrokenPipeError as err:
                raise OutputClosed from err
            except OSError as err:
                raise PathIOError(err, f"cannot write {self.name}") from err
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

    def reopen(self) -> str | None:
        """Go on writing into the file now at our path (SIGHUP, after logrotate renamed ours away).

        Called at a task boundary: everything committed is in the old file, which is
        flushed to disk and cut to its committed end, and nothing else is placed in it.
        The new file (made if logrotate did not) is written after what it holds; the
        descriptor keeps its number, so a worker started later inherits the new file.
        Returns what happened, or None when there is nothing to reopen (the same file,
        or not a file of ours). Raises OSError.
        """
        if not self.own or self.path is None:
            return None
        if self.direct:
            os.ftruncate(self.fd, self.at)  # a lost task's bytes past the committed end
        if self.regular:
            os.fsync(self.fd)
        old = os.fstat(self.fd)
        try:
            now = os.stat(self.path)
            if (now.st_dev, now.st_ino) == (old.st_dev, old.st_ino):
                return None
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | (0 if self.direct else os.O_APPEND)
        new = os.open(self.path, flags, 0o666)
        try:
            st = os.fstat(new)
            if self.direct and not stat.S_ISREG(st.st_mode):
                raise OSError(f"the new output at {self.path!r} is not a regular file; it is left unwritten")
            os.dup2(new, self.fd)
        finally:
            os.close(new)
        self.regular = stat.S_ISREG(st.st_mode)
        self.base = self.bytes_written - (st.st_size if self.regular else 0)
        self.reopens += 1
        held = f", after the {st.st_size:,} bytes it held" if self.regular and st.st_size else ""
        return f"reopened the output {self.path} (a new file{held})"

    def close(self) -> OSError | None:
        """Cut a direct output to what was committed, and close; returns the error, if any (never raises)."""
        self.before_fork()
        failed = None
        try:
            if self.direct:
                # Anything after the committed output is a task a stopped run did not count.
                os.ftruncate(self.fd, self.at)
        except OSError as err:
            failed = PathIOError(err, f"cannot cut {self.name} to its committed end")
        finally:
            if self.own:
                try:
                    os.close(self.fd)
                except OSError as err:  # e.g. a delayed write error of a network file system
                    failed = failed or PathIOError(err, f"cannot close {self.name}")
        return failed
