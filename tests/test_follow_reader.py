"""The follow reader on its own: a growing file read once, through renames, copies and truncations."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpobs.inputs.base import NOT_READY
from mpobs.inputs.blockstore import BlockStore
from mpobs.inputs.follow import FollowSource, find_generation, successor
from mpobs.inputs.generation import Generation
from tests.helpers import append, wait_for


class Following:
    """A followed file's plan being read in the background: blocks as they come, slots given back.

    ``gate``: while it is clear, the block just taken keeps its slot (with ``slots=1`` the reader then
    waits for a slot, holding what it read): the test can change the file under a reader that is not looking.
    """

    def __init__(self, path: Path, slots: int = 8) -> None:
        self.path = path
        self.source = FollowSource(str(path), str(path), path.stat().st_size if path.exists() else 0)
        self.store = BlockStore.in_memory(slots, 1 << 16)
        self.blocks: list[tuple[Any, bytes]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.woken = threading.Event()
        self.plan: Iterator[Any] = self.source.pieces(1 << 16, self.store, self.woken.set)
        self.thread = threading.Thread(target=self._take, daemon=True)
        self.thread.start()

    def _take(self) -> None:
        for item in self.plan:
            if item is NOT_READY:
                self.woken.wait(0.05)
                self.woken.clear()
                continue
            data = bytes(self.store.get(item.slot, item.end - item.start)) if item.data is None else item.data
            with self.lock:
                self.blocks.append((item, data))
            self.gate.wait()
            self.store.release(item.slot)

    def lines(self) -> list[bytes]:
        """The lines read so far: each block's, its last line a line with or without its newline."""
        with self.lock:
            return [line for _, d in self.blocks for line in d.removesuffix(b"\n").split(b"\n")]

    def wait_for(self, *want: bytes, timeout: float = 30) -> None:
        """Until the lines read are ``want``; fails if they are something else, or too late."""
        deadline = time.monotonic() + timeout
        while (got := self.lines()) != list(want):
            assert got == list(want[: len(got)]), f"read {got!r}, not the first lines of {want!r}"
            assert time.monotonic() < deadline, f"read {got!r} of {want!r}"
            time.sleep(0.02)

    def stop(self) -> list[bytes]:
        self.gate.set()
        self.source.close()
        self.thread.join(10)
        if self.thread.is_alive():  # waiting for a slot: the store's closing wakes it
            self.store.close()
            self.thread.join(10)
        assert not self.thread.is_alive()
        return self.lines()


@pytest.fixture
def following() -> Iterator[list[Following]]:
    """Followings a test starts; each is stopped at the end, whatever happened."""
    started: list[Following] = []
    yield started
    for f in started:
        f.stop()


def follow(started: list[Following], path: Path) -> Following:
    f = Following(path)
    started.append(f)
    return f


def test_what_is_there_then_what_is_appended_each_line_once(tmp_path: Path, following: list[Following]) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"one\ntwo\n")
    f = follow(following, log)
    f.wait_for(b"one", b"two")
    append(log, b"three\n")
    f.wait_for(b"one", b"two", b"three")
    assert f.source.lines_read == 3 and f.source.rotations == 0 and f.source.last_line_at > 0
    assert [p.lines for p, _ in f.blocks] == [2, 1]  # what is there at once, not a full block later
    assert f.source.lag_bytes == 0


def test_a_partial_line_waits_for_its_newline(tmp_path: Path, following: list[Following]) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"one\nhal")
    f = follow(following, log)
    f.wait_for(b"one")
    time.sleep(0.4)  # several of its looks at the file: the half line is still not a line
    assert f.lines() == [b"one"]
    append(log, b"f\n")
    f.wait_for(b"one", b"half")


def test_stopping_hands_out_whole_lines_and_keeps_back_a_partial_one(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"one\n")
    f = Following(log)
    f.wait_for(b"one")
    append(log, b"two\nthr")
    assert f.stop() in ([b"one"], [b"one", b"two"])  # "two" if it looked again before the stop; never "thr"


def test_rename_and_create_reads_the_old_file_to_its_end_then_the_new_one(
    tmp_path: Path, following: list[Following]
) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"old 1\n")
    f = follow(following, log)
    f.wait_for(b"old 1")
    log.rename(tmp_path / "app.log.1")  # logrotate's create
    append(tmp_path / "app.log.1", b"old 2, before the application reopened its log\nold last, no newline")
    log.write_bytes(b"new 1\n")
    # The old file to its end, its last line complete without its newline, then the new one.
    f.wait_for(b"old 1", b"old 2, before the application reopened its log", b"old last, no newline", b"new 1")
    assert f.source.rotations == 1 and f.source.lines_read == 4


def test_deleted_and_created_again_is_followed(tmp_path: Path, following: list[Following]) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    f = follow(following, log)
    f.wait_for(b"a")
    log.unlink()
    time.sleep(0.3)  # a while with no file at the path: it waits for one
    log.write_bytes(b"b\n")
    f.wait_for(b"a", b"b")
    assert f.source.rotations == 1


def test_copytruncate_is_seen_and_the_new_content_read_from_its_start(
    tmp_path: Path, following: list[Following]
) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"first line of the first generation\n")
    f = follow(following, log)
    f.wait_for(b"first line of the first generation")
    shutil.copyfile(log, tmp_path / "app.log.1")  # logrotate's copytruncate
    with open(log, "r+b") as out:
        out.truncate(0)
    wait_for(lambda: f.source.rotations == 1, 30)
    append(log, b"second\n")
    f.wait_for(b"first line of the first generation", b"second")


def test_a_file_truncated_and_written_past_the_old_offset_before_the_look_is_read_from_its_start(
    tmp_path: Path, following: list[Following]
) -> None:
    """Its first bytes are not the ones read: rotated, though it is not shorter; nothing of it is skipped."""
    log = tmp_path / "app.log"
    log.write_bytes(b"aaaa\n")
    f = follow(following, log)
    f.wait_for(b"aaaa")
    log.write_bytes(b"bbbbbbbbbb longer than before\n")  # truncated and written again in one go
    f.wait_for(b"aaaa", b"bbbbbbbbbb longer than before")
    assert f.source.rotations == 1


def test_lines_copied_away_before_the_reader_read_them_are_read_from_the_copy(tmp_path: Path) -> None:
    """copytruncate while the reader holds a part of the file it has not handed out: the rest of that
    generation comes from the copy (found by its first bytes), from where the reader was, then the new file."""
    log = tmp_path / "app.log"
    log.write_bytes(b"head\n")
    f = Following(log, slots=1)
    try:
        f.gate.clear()  # the first block keeps the only slot: the reader stops at its next block
        f.wait_for(b"head")
        more = [b"line %d %s" % (k, b"x" * 50) for k in range(6000)]  # well over what one read takes
        append(log, b"".join(m + b"\n" for m in more))
        wait_for(lambda: f.source.bytes_read > 5, 30)  # it read some of them, and waits for a slot
        shutil.copyfile(log, tmp_path / "app.log.1")
        with open(log, "r+b") as out:
            out.truncate(0)
        append(log, b"new\n")
        assert f.source.bytes_read < 5 + len(b"".join(m + b"\n" for m in more))  # not all read before the copy
        f.gate.set()
        f.wait_for(b"head", *more, b"new")
        assert f.source.rotations == 1
    finally:
        f.stop()


def test_where_names_the_generation_and_the_offset_after_the_block(tmp_path: Path) -> None:
    """What a checkpoint keeps to resume a followed file: its inode, its first bytes' hash, the offset."""
    log = tmp_path / "app.log"
    log.write_bytes(b"head of the file\n")
    f = Following(log)
    f.wait_for(b"head of the file")
    f.stop()
    where = f.blocks[-1][0].where
    st = log.stat()
    assert where == (st.st_dev, st.st_ino, 17, hashlib.sha256(b"head of the file\n").hexdigest(), 17)


def test_successor_is_the_generation_after_the_finished_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    for name, text in (("app.log.3", b"oldest\n"), ("app.log.2", b"older\n"), ("app.log.1", b"old\n")):
        (tmp_path / name).write_bytes(text)
    log.write_bytes(b"")
    st = {n: os.stat(tmp_path / n) for n in ("app.log.3", "app.log.2", "app.log.1")}
    assert successor(str(log), st["app.log.3"]) == str(tmp_path / "app.log.2")  # rotated twice since
    assert successor(str(log), st["app.log.1"]) == str(log)
    (tmp_path / "app.log.2").write_bytes(b"")  # an empty generation is passed over
    assert successor(str(log), st["app.log.3"]) == str(tmp_path / "app.log.1")
    (tmp_path / "app.log.3").unlink()  # compressed away: the oldest one changed after it was
    assert successor(str(log), st["app.log.3"]) == str(tmp_path / "app.log.1")


def test_find_generation_by_inode_and_first_bytes_or_first_bytes_alone(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"generation one\nmore\n")
    st = log.stat()
    head = b"generation one\n"
    where = Generation(st.st_dev, st.st_ino, len(head), hashlib.sha256(head).hexdigest(), 20)
    assert find_generation(str(log), where) == str(log)
    log.rename(tmp_path / "app.log.1")
    log.write_bytes(b"generation two\n")
    assert find_generation(str(log), where) == str(tmp_path / "app.log.1")  # renamed: the same inode
    shutil.copyfile(tmp_path / "app.log.1", tmp_path / "app.log.2")
    (tmp_path / "app.log.1").unlink()
    assert find_generation(str(log), where) == str(tmp_path / "app.log.2")  # copied: by its first bytes
    where = where._replace(offset=10_000)  # the copy is shorter than where the checkpoint stood: not it
    assert find_generation(str(log), where) is None
    where = where._replace(offset=20)
    copy = (tmp_path / "app.log.2").stat()
    assert find_generation(str(log), where, exclude=(copy.st_dev, copy.st_ino)) is None
