"""Checkpoints: commit points at which the output on disk, every counter and each input's position agree.

At a commit point (every ``--checkpoint-every`` seconds, and at exit) the coordinator
flushes the output to disk (fsync), then writes the state atomically: a temp file next
to the checkpoint, fsync, rename over it, fsync of the folder. A crash at any moment
leaves either the old checkpoint or the new one, and the output on disk holds at least
what the checkpoint says it does. The state is what the committed output holds, and
nothing else (only tasks in the output count, ``mpobs.run.ordered_output``):

- per input (in the order given): its name, device, inode and a hash of its first bytes
  (so another file at the path is noticed), the bytes of it in the output (decoded bytes
  for a compressed input), its lines there, and whether all of it is;
- the output file's length; every counter of the stats (the committed count vector:
  per-processor lines in/out, errors, time and batches, tags; the counter keys; errors by
  type); a hash of the config.

On start with an existing checkpoint (``load``) it is checked against this run: the same
config, the same inputs, each the same file, an output at least as long; anything else
is refused (exit 2) saying what differs. Then the output is cut back to its recorded
length, the counters are restored, and each input resumes where it stood: the run
finishes with the output and metrics of one that was never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mpobs.errors import InputError, MpobsError
from mpobs.inputs.follow import GENERATIONS, HEAD_BYTES, find_generation, head_is
from mpobs.inputs.generation import Generation
from mpobs.lifeline import remove_left_over
from mpobs.output.resume import check_output, resume_output

VERSION = 1


class CheckpointError(MpobsError):
    """The checkpoint cannot be written (a full disk): the run fails, the last good one stays."""


@dataclass
class InputPosition:
    name: str  # as given
    dev: int
    ino: int
    head_len: int
    head_sha256: str
    offset: int = 0  # bytes of the input in the output (decoded bytes for a compressed input)
    raw: int = 0  # the input's own bytes those account for (compressed bytes)
    lines: int = 0
    done: bool = False
    # A followed input (--follow): the generation the output ends in, and the offset in it; in the
    # file the list [dev, ino, head_len, head_sha256, offset] (``read`` and ``to_json`` convert).
    where: Generation | None = None

    def generation(self) -> Generation:
        """Where a followed input resumes: ``where``; with nothing of it in the output yet, the
        start of the generation it began in, as the checkpoint first saw it."""
        return self.where or Generation(self.dev, self.ino, self.head_len, self.head_sha256, 0)


@dataclass
class Checkpoint:
    config_sha256: str
    inputs: list[InputPosition]
    output_length: int = 0
    lines: int = 0  # run-wide lines in the output
    counts: list[int] = field(default_factory=list)  # the committed count vector (segment.Layout.vector)
    columns: list[str] = field(default_factory=list)  # its column names, to check the layout
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    error_types: list[list[Any]] = field(default_factory=list)  # [processor, type, count]
    written_at: float = 0.0
    follow: bool = False  # made by a run with --follow
    output_id: list[int] = field(default_factory=list)  # the output file's [dev, ino]
    version: int = VERSION

    def to_json(self) -> str:
        doc = asdict(self)
        for i in doc["inputs"]:
            if i["where"] is not None:
                i["where"] = list(i["where"])  # a Generation: the list it always was in the file
        return json.dumps(doc, sort_keys=True)


def _lock(path: str) -> int:
    """One run per checkpoint: an exclusive lock on ``<path>.lock``, held while the run lives."""
    import fcntl

    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise InputError(f"checkpoint {path!r}: cannot make its lock file {lock_path!r}: {err.strerror}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise InputError(
            f"checkpoint {path!r} is in use by another mpobs run (pid {other}); one run per checkpoint"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def config_hash(processors: list[dict[str, Any]]) -> str:
    """The pipeline as the stats describe it (ids, types, wiring, every setting)."""
    return hashlib.sha256(json.dumps(processors, sort_keys=True, default=str).encode()).hexdigest()


def identify(name: str, path: str) -> InputPosition:
    st = os.stat(path)
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    return InputPosition(name, st.st_dev, st.st_ino, len(head), hashlib.sha256(head).hexdigest())


def head_matches(path: str, pos: InputPosition) -> bool:
    return head_is(path, pos.head_len, pos.head_sha256)


def read(path: str) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none. Unreadable or corrupt: InputError (exit 2)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise InputError(f"checkpoint {path!r} cannot be read: {err.strerror}") from err
    try:
        raw = json.loads(text)
        if raw.get("version") != VERSION:
            raise ValueError(f"version {raw.get('version')!r}, this mpobs writes {VERSION}")
        raw["inputs"] = [InputPosition(**i) for i in raw["inputs"]]
        cp = Checkpoint(**raw)
        _check_shape(cp)
        for i in cp.inputs:
            if i.where is not None:
                i.where = Generation(*i.where)  # a list in the file
        return cp
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise InputError(f"checkpoint {path!r} is corrupt ({err}); remove it to start afresh") from err


def _check_shape(cp: Checkpoint) -> None:
    """Types and lengths a resume relies on (a hand-edited file must be refused, not crash the run)."""
    ints = [cp.output_length, cp.lines, *cp.counts] + [
        v for i in cp.inputs for v in (i.dev, i.ino, i.offset, i.raw, i.lines)
    ]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise ValueError("a count or offset is not a whole number >= 0")
    if len(cp.counts) != len(cp.columns) or not all(isinstance(c, str) for c in cp.columns):
        raise ValueError(f"{len(cp.counts)} counts for {len(cp.columns)} columns")
    if not all(isinstance(k, dict) and all(isinstance(n, int) for n in k.values()) for k in cp.counters.values()):
        raise ValueError("a counter is not a table of whole numbers")
    if not all(isinstance(e, list) and len(e) == 3 and isinstance(e[2], int) for e in cp.error_types):
        raise ValueError("errors by type are not [processor, type, count]")
    for i in cp.inputs:
        if i.where is not None and not (isinstance(i.where, list) and len(i.where) == 5):
            raise ValueError(f"input {i.name!r}: its generation is not [dev, ino, head length, head hash, offset]")


def _temp_path(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


def _remove_temp_files(path: str) -> None:
    folder, name = os.path.split(os.path.abspath(path))
    remove_left_over(folder, re.compile(rf"^\.{re.escape(name)}\.\d+\.tmp$"))


def write(path: str, cp: Checkpoint) -> None:
    """Atomically: a temp file beside it, fsync, rename, fsync of the folder. Raises CheckpointError."""
    cp.written_at = time.time()
    folder = os.path.dirname(os.path.abspath(path))
    tmp = _temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            data = cp.to_json().encode() + b"\n"
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CheckpointError(
            f"cannot write the checkpoint {path!r}: {err.strerror or err}; the last one written stays valid"
        ) from err


def check(
    cp: Checkpoint,
    path: str,
    config_sha: str,
    inputs: list[tuple[str, str]],
    columns: list[str],
    output_path: str,
    followed: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Refuse (InputError, exit 2) a checkpoint this run cannot resume, saying what differs.

    ``inputs``: per input, (the name as given, the path to open it at).
    """
    where = f"checkpoint {path!r}"
    if cp.follow != bool(followed):
        made = "with" if cp.follow else "without"
        raise InputError(f"{where} was made {made} --follow; run {made} it, or remove the checkpoint")
    if cp.config_sha256 != config_sha:
        raise InputError(f"{where} was made with another pipeline config; run with that config, or remove it")
    if cp.columns != columns:  # e.g. before the latency histograms: counts this version cannot go on from
        raise InputError(
            f"{where} was made by another mpobs version (its counts have other columns); finish the "
            "run with that version, or remove the checkpoint"
        )
    names = [name for name, _ in inputs]
    if [i.name for i in cp.inputs] != names:
        raise InputError(f"{where} was made for the inputs {[i.name for i in cp.inputs]}, not {names}")
    for pos, (name, at) in zip(cp.inputs, inputs):
        if name in followed:  # rotated since, maybe: its generation is looked for next to the path
            gen = pos.generation()
            if find_generation(at, gen) is None:
                raise InputError(
                    f"{where}: the generation of the followed {name!r} it stopped in (inode "
                    f"{gen.ino}) is not next to it any more (rotated further than "
                    f"{name}.{GENERATIONS}, deleted or compressed); remove the checkpoint to start "
                    "afresh"
                )
            continue
        try:
            st = os.stat(at)
        except OSError as err:
            raise InputError(f"{where}: input {name!r} is gone ({err.strerror})") from err
        if (st.st_dev, st.st_ino) != (pos.dev, pos.ino) or not head_matches(at, pos):
            raise InputError(
                f"{where}: input {name!r} is not the file the checkpoint was made for "
                f"(inode {pos.ino}, now {st.st_ino}, or its first bytes differ)"
            )
    check_output(cp.output_id, cp.output_length, where, output_path)


class Checkpointer:
    """The coordinator's side: load and check a checkpoint at start, restore it, write one at commit points."""

    def __init__(
        self,
        path: str,
        every: float,
        processors: list[dict[str, Any]],
        columns: list[str],
        source: Any,
        output_path: str | None,
    ) -> None:
        if output_path is None:
            raise InputError("--checkpoint needs --output FILE: what went to stdout cannot be cut back to a checkpoint")
        streams = [s.given for s in source.sources if s.kind == "stream" or s.given == "-"]
        if streams:
            raise InputError(
                f"--checkpoint cannot resume a stream or standard input ({', '.join(streams)}); "
                "give files by their names"
            )
        self.path, self.every, self.columns = path, every, columns
        self.output_path = output_path
        self.config_sha = config_hash(processors)
        self._lock_fd = _lock(path)  # held for the run's life (closed with the process)
        _remove_temp_files(path)  # of a run killed while writing one: with the lock held, none is in use
        self.found = read(path)
        opened = [(s.given, s.path) for s in source.sources]
        followed = {s.given for s in source.sources if getattr(s, "following", False)}
        self.follow = bool(followed)
        if self.found is not None:
            check(self.found, path, self.config_sha, opened, columns, output_path, followed)
            self.identities = self.found.inputs
        else:
            self.identities = [identify(name, at) for name, at in opened]
        self._last = time.monotonic()
        self._saved_key: tuple[int, list[Generation | None]] | None = None

    def resume_output(self) -> tuple[int, int] | None:
        """When resuming: the output file to go on in (a descriptor, opened here) and its length.

        The output is cut back to what the checkpoint recorded. If logrotate renamed it
        away, the renamed file is cut, and the run goes on in the (empty) file at the path.
        Files are checked by descriptor, so a rename while this runs cannot make it cut
        another file (a rename after it comes with logrotate's SIGHUP, which the run
        catches from before this is called).
        """
        cp = self.found
        if cp is None:
            return None
        return resume_output(cp.output_id, cp.output_length, f"checkpoint {self.path!r}", self.output_path)

    def restore(self, seg: Any, counters: dict[str, Any], error_types: Any, source: Any) -> None:
        """Counters as the checkpoint had them; the inputs resume where it stood."""
        cp = self.found
        if cp is None:
            return
        seg.restore(cp.counts)
        for pid, keys in cp.counters.items():
            counters[pid].update(keys)
        for proc, kind, n in cp.error_types:
            error_types[(proc, kind)] += n
        source.resume(cp.inputs)
        # The totals the stats show count what came before too.
        source.lines_planned, source.tasks_planned = cp.lines, cp.counts[self.columns.index("tasks_done")]
        self._saved_key = (cp.lines, [i.where for i in cp.inputs])

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def save(
        self,
        out_fd: int,
        output_length: int,
        seg: Any,
        counters: dict[str, dict[str, int]],
        error_types: dict[tuple[str, str], int],
        source: Any,
        force: bool = False,
    ) -> Checkpoint | None:
        """A commit point: the output to disk, then the state (``seg``'s committed counts); the one
        written, or None when nothing was new. The segment's system row then says when it was
        written and what it holds (for /stats).

        Raises CheckpointError (the old one stays)."""
        self._last = time.monotonic()
        positions = source.positions()
        lines = sum(p["lines"] for p in positions)
        key = (lines, [p["where"] for p in positions])
        if key == self._saved_key and not force:
            return None  # nothing new is in the output (nor a followed file rotated since)
        try:
            os.fsync(out_fd)
        except OSError as err:
            raise CheckpointError(
                f"cannot flush the output to disk: {err.strerror or err}; the last checkpoint stays valid"
            ) from err
        inputs = [
            InputPosition(
                i.name,
                i.dev,
                i.ino,
                i.head_len,
                i.head_sha256,
                p["offset"],
                p["raw"],
                p["lines"],
                p["done"],
                p["where"],
            )
            for i, p in zip(self.identities, positions)
        ]
        st = os.fstat(out_fd)
        cp = Checkpoint(
            self.config_sha,
            inputs,
            output_length,
            lines,
            list(seg.snapshot().committed),
            self.columns,
            counters,
            [[p, t, n] for (p, t), n in sorted(error_types.items())],
            follow=self.follow,
            output_id=[st.st_dev, st.st_ino],
        )
        write(self.path, cp)
        self._saved_key = key
        seg.set_system(
            checkpoint_at_ms=int(cp.written_at * 1000), checkpoint_lines=lines, checkpoint_output=output_length
        )
        return cp
