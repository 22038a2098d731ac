"""Planning a regular file into tasks of whole lines, as the coordinator does before any work."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest


@pytest.mark.parametrize("with_numpy", [False, True])
@pytest.mark.parametrize("tail", [b"\n", b"no newline at the end"])
def test_a_file_is_planned_into_whole_lines_with_and_without_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_numpy: bool, tail: bytes
) -> None:
    """Task ends and line counts, as the plan makes them, against a count done here."""
    import mpobs.inputs.base as inputs

    # Short and long lines, one longer than the planner's read buffer, empty ones, invalid UTF-8.
    lines = [b"x" * (i * 37 % 300) for i in range(3000)] + [b"L" * (3 * inputs.COUNT_BYTES), b"", b"\xff\xfe"]
    data = b"\n".join(lines) + tail
    path = tmp_path / "in.log"
    path.write_bytes(data)
    monkeypatch.setattr(inputs, "NUMPY_PLAN_BYTES", 0 if with_numpy else 1 << 40)
    monkeypatch.setattr(inputs, "RELEASE_BYTES", 4096)  # several releases a task
    source = inputs.FileSource(str(path), str(path), len(data), start=5)  # starts part way, as stdin may
    pieces = list(source.pieces(task_bytes=20_000))
    assert pieces[0].start == 5 and pieces[-1].end == len(data)
    for a, b in itertools.pairwise(pieces):
        assert a.end == b.start and data[a.end - 1 : a.end] == b"\n"
    for p in pieces:
        chunk = data[p.start : p.end]
        assert p.lines == chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
    assert source.lines_read == sum(p.lines for p in pieces)
    assert len(pieces) > 10  # the long line made one task of its own, bigger than task_bytes
    assert max(p.end - p.start for p in pieces) > 3 * inputs.COUNT_BYTES


def test_planning_a_file_that_grows_stops_at_the_size_it_was_given(tmp_path: Path) -> None:
    """A log still being written: the plan ends where the file ended when it was looked at, even
    inside a long last line that has grown since (its rest is the next run's)."""
    import mpobs.inputs.base as inputs

    data = b"a\n" * 2000 + b"L" * 20_000
    path = tmp_path / "in.log"
    path.write_bytes(data + b"more of the last line\nand a new one\n")
    pieces = list(inputs.FileSource(str(path), str(path), len(data)).pieces(task_bytes=1024))
    assert pieces[-1].end == len(data) and all(p.end <= len(data) for p in pieces)
    assert sum(p.lines for p in pieces) == 2001
