"""Process lifetimes: children (workers, the dashboard) that must not outlive the coordinator; is a pid alive;
what a process killed outright left behind (``remove_left_over``).

A module of its own with nothing heavy to import: the dashboard process uses it first thing.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
from collections.abc import Callable
from typing import Any


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies; elsewhere the checks per batch do it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (someone else's counts as alive: not ours to judge)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_left_over(
    folder: str,
    pattern: re.Pattern[str],
    left_over: Callable[[re.Match[str]], bool] = lambda m: True,
    remove: Callable[[str], Any] = os.unlink,
) -> None:
    """Remove the entries of ``folder`` whose name matches ``pattern`` and that ``left_over`` says nobody owns.

    Shared-memory segments, part folders and checkpoint temp files name their owner's
    pid (or run) in their name; a run killed outright (SIGKILL) cannot remove its own.
    What cannot be listed or removed is left alone: it is only ever a leftover.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m is not None and left_over(m):
            try:
                remove(os.path.join(folder, name))
            except OSError:
                pass
