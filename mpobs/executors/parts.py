"""Part files: a task's output written apart, then joined into the output in task order (both executors).

A run's part files live in one temporary folder named after its coordinator's pid
(``mpobs-parts-<pid>-...``), so that a run that died leaves a folder the next run can
tell is orphaned and remove.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable

from mpobs.lifeline import remove_left_over

PARTS_PREFIX = "mpobs-parts-"


def make_part_dir() -> str:
    """A new folder for this run's part files."""
    return tempfile.mkdtemp(prefix=f"{PARTS_PREFIX}{os.getpid()}-")


def part_path(part_dir: str, index: int, attempt: int | None = None) -> str:
    """Where task ``index``'s output goes; ``attempt``: one file per run of the task (a lost run may leave its own)."""
    name = f"part-{index:09d}" if attempt is None else f"part-{index:09d}-{attempt}"
    return os.path.join(part_dir, name)


def remove_leftover_parts(alive: Callable[[int], bool]) -> None:
    """Remove part folders of runs whose coordinator (the pid in the name) is dead."""
    remove_left_over(
        tempfile.gettempdir(),
        re.compile(rf"^{PARTS_PREFIX}(\d+)-"),
        lambda m: not alive(int(m[1])),
        lambda path: shutil.rmtree(path, ignore_errors=True),
    )
