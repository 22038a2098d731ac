"""Our output across logrotate's renames: where a checkpoint's output file is now, and cutting it back.

logrotate may have renamed our output (``out.log`` to ``out.log.1``) while we were down,
or between a SIGHUP's reopen and its checkpoint: the old file is found by inode next to
the path, cut back to what the checkpoint recorded, and the run goes on in the new,
empty file at the path. ``check_output`` refuses early (exit 2) what cannot resume;
``resume_output`` then acts through descriptors, so a rename meanwhile cannot make it
cut another file.
"""

from __future__ import annotations

import os

from mpobs.errors import InputError


def check_output(output_id: list[int], length: int, where: str, output_path: str) -> None:
    """The output a checkpoint names is at the path, or renamed away next to it (InputError if not)."""
    try:
        st = os.stat(output_path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise InputError(f"{where}: cannot read its output {output_path!r} ({err.strerror})") from err
    if st is not None and (not output_id or [st.st_dev, st.st_ino] == output_id):
        _long_enough(st.st_size, length, where, output_path)
        return
    found = _rotated_output(output_path, output_id) if output_id else None
    if found is None:
        if st is None:
            raise InputError(f"{where}: its output {output_path!r} is gone")
        raise InputError(
            f"{where}: {output_path!r} is not the output file it wrote (another inode), and that "
            "file is not next to it (rotated and compressed, or removed); remove the checkpoint "
            "to start afresh"
        )
    if st is not None and st.st_size > 0:
        raise InputError(
            f"{where}: its output was rotated to {found!r}, but the new {output_path!r} is not "
            "empty; something else writes it"
        )
    _long_enough(os.stat(found).st_size, length, where, found)


def resume_output(output_id: list[int], length: int, where: str, output_path: str) -> tuple[int, int]:
    """The output file to go on in (a descriptor, opened here) and its length, cut back to ``length``.

    A rename after this comes with logrotate's SIGHUP, which the run catches from before
    this is called.
    """
    fd = os.open(output_path, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        st = os.fstat(fd)
        if not output_id or [st.st_dev, st.st_ino] == output_id:
            _cut(fd, length, where, output_path)
            return fd, length
        if st.st_size > 0:
            raise InputError(f"{where}: {output_path!r} is another file than the output it wrote, and not empty")
        old = _open_rotated_output(output_path, output_id)
        if old is None:
            raise InputError(
                f"{where}: the output it wrote is not at {output_path!r} nor next to it any more "
                "(rotated and compressed, or removed); remove the checkpoint to start afresh"
            )
        try:
            _cut(old, length, where, output_path)
        finally:
            os.close(old)
        return fd, 0
    except BaseException:
        os.close(fd)
        raise


def _long_enough(size: int, length: int, where: str, name: str) -> None:
    if size < length:
        raise InputError(
            f"{where}: its output {name!r} holds {size:,} bytes, fewer than the {length:,} it "
            "recorded; it was changed since"
        )


def _cut(fd: int, length: int, where: str, name: str) -> None:
    _long_enough(os.fstat(fd).st_size, length, where, name)
    os.ftruncate(fd, length)
    os.fsync(fd)


def _open_rotated_output(path: str, output_id: list[int]) -> int | None:
    """A descriptor of ``path``'s old file (found by inode next to it), checked after opening; None if gone."""
    for _ in range(5):  # renamed again between finding and opening it: look again
        found = _rotated_output(path, output_id)
        if found is None:
            return None
        try:
            fd = os.open(found, os.O_WRONLY)
        except FileNotFoundError:
            continue
        st = os.fstat(fd)
        if [st.st_dev, st.st_ino] == output_id:
            return fd
        os.close(fd)
    return None


def _rotated_output(path: str, output_id: list[int]) -> str | None:
    """``path``'s old file by device and inode among its rotated names (``path.1``, ``path-20261204``)."""
    folder, name = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    for other in sorted(names):
        if other.startswith((name + ".", name + "-")):
            try:
                st = os.lstat(os.path.join(folder, other))
            except OSError:
                continue
            if [st.st_dev, st.st_ino] == output_id:
                return os.path.join(folder, other)
    return None
