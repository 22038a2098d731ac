"""A place in one generation of a followed file: the record the readers, the tasks and checkpoints share.

A module of its own, below the input sources that use it (``mpobs.inputs.base``,
``streams`` and ``follow``), so that none of them imports another to name it.
"""

from __future__ import annotations

from typing import NamedTuple


class Generation(NamedTuple):
    """One generation of a followed file and a place in it: where a task ends, where a checkpoint resumes.

    The file is the one on device ``dev`` with inode ``ino`` whose first ``head_len`` bytes
    hash to ``head_sha256``; ``offset`` is a byte offset in it. ``find_generation`` finds it
    again next to the followed path, by inode, or by its head alone once copytruncate has
    copied it away. A checkpoint keeps it as the JSON list ``[dev, ino, head_len,
    head_sha256, offset]`` (``mpobs.run.checkpoint``).

    A named tuple: compared by value (a checkpoint is written only when the positions
    changed), and its module is imported only by runs that follow or checkpoint.
    """

    dev: int
    ino: int
    head_len: int
    head_sha256: str
    offset: int
