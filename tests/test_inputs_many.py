"""Many inputs read as one stream: files, compressed files and stdin together, at any worker count.

Files alone are checked in-process (mpobs.testing); stdin among them, and refusals, on the command line.

What a run must give is computed without mpobs: the reference (tests/reference.py) over the bytes the inputs hold.
"""

from __future__ import annotations

import gzip
import itertools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpobs.pipeline.config import DEFAULT_CONFIG
from mpobs.testing import run_pipeline
from tests.helpers import (
    FORMATS,
    SMALL_TASKS,
    assert_default_counts,
    assert_input,
    assert_no_traceback,
    compress_bytes,
    log_bytes,
    ok,
    run_process,
    write_config,
)
from tests.reference import default_pipeline, split_lines


def joined(*parts: bytes) -> bytes:
    """The one stream many inputs make: each input's last line is a line of its own."""
    return b"".join(p if not p or p.endswith(b"\n") else p + b"\n" for p in parts)


# ---------------------------------------------------------------------------------------------
# many inputs


def test_one_unreadable_input_among_many_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "good_a.log").write_bytes(b"a ERROR\n")
    (tmp_path / "good_b.log").write_bytes(b"b ERROR\n")
    r = run_process(tmp_path, "good_a.log", "missing.log", "good_b.log", cwd=tmp_path)
    assert r.code == 2, r.err
    assert_no_traceback(r)
    assert "missing.log" in r.err
    assert "good_a.log" not in r.err and "good_b.log" not in r.err  # only what cannot be read is named
    assert r.out is None  # -o not created


def test_every_unreadable_input_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_bytes(b"a ERROR\n")
    (tmp_path / "adir").mkdir()
    out = tmp_path / "kept.out"
    out.write_bytes(b"old output\n")
    res = subprocess.run(
        [sys.executable, "-m", "mpobs", "process", "nothere.log", "a.log", "adir", "-q", "-o", str(out)],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "Traceback" not in err
    assert "nothere.log" in err and "adir" in err
    assert out.read_bytes() == b"old output\n"  # not changed


def test_many_files_are_one_stream(tmp_path: Path, workers: int) -> None:
    parts = [log_bytes(900, seed=s, awkward=0.02) for s in (1, 2, 3)]
    paths = []
    for i, part in enumerate(parts):
        (tmp_path / f"p{i}.log").write_bytes(part)
        paths.append(tmp_path / f"p{i}.log")
    r = run_pipeline(DEFAULT_CONFIG, paths, workers=workers)  # in-process, many tasks and batches
    whole = b"".join(parts)  # cat p0 p1 p2
    assert r.output == default_pipeline(whole)[0]
    assert_default_counts(r.stats, whole)
    assert [e["lines"] for e in r.stats["inputs"]] == [900, 900, 900]
    assert [e["name"] for e in r.stats["inputs"]] == [str(p) for p in paths]


def test_a_file_without_final_newline_ends_its_own_line(tmp_path: Path) -> None:
    a, b, c = b"x ERROR one\ny INFO two", b"z WARN three\n", b"ERROR four"
    for name, part in (("a.log", a), ("b.log", b), ("c.log", c)):
        (tmp_path / name).write_bytes(part)
    r = run_pipeline(DEFAULT_CONFIG, [tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"], workers=2)
    assert r.output == default_pipeline(joined(a, b, c))[0]
    assert r.output == b"Line 1: x ERROR one\nLine 2: y INFO two\nLine 3: z WARN three\nLine 4: ERROR four\n"
    assert [e["lines"] for e in r.stats["inputs"]] == [2, 1, 1]


def test_file_and_file_line_fields(tmp_path: Path, workers: int) -> None:
    (tmp_path / "sub").mkdir()
    a = b"".join(b"alpha %d {count} {line}\n" % i for i in range(1, 61))
    b = b"".join(b"beta %d\n" % i for i in range(1, 41)) + b"beta last, no newline"
    s = b"".join(b"from stdin %d\n" % i for i in range(1, 51))
    (tmp_path / "a.log").write_bytes(a)
    (tmp_path / "sub" / "b.log").write_bytes(b)
    (tmp_path / "empty.log").write_bytes(b"")
    c_abs = str(tmp_path / "sub" / "c.log")
    c = b"gamma\n\ngamma 3\n"
    Path(c_abs).write_bytes(c)
    given = ["a.log", "./sub/b.log", "-", "empty.log", c_abs]
    fields = {"type": "line_counter", "id": "num", "format": "{file}:{file_line}:{count}:{line}"}
    config = write_config(tmp_path, [fields])
    r = ok(run_process(tmp_path, *given, cwd=tmp_path, input=s, config=config, workers=workers, extra=SMALL_TASKS))
    want, count = [], 0
    for name, part in zip(given, (a, b, s, b"", c)):
        for file_line, line in enumerate(split_lines(part), 1):
            count += 1
            want.append(f"{name}:{file_line}:{count}:{line}\n")
    assert r.out == "".join(want).encode()
    assert [e["name"] for e in r.inputs] == given
    assert [e["lines"] for e in r.inputs] == [60, 41, 50, 0, 3]
    assert [e["kind"] for e in r.inputs] == ["file", "file", "stream", "file", "file"]


def test_mixed_plain_compressed_and_stdin_inputs_and_their_stats(tmp_path: Path) -> None:
    fmts = [f for f in FORMATS if shutil.which(f)]
    parts = [log_bytes(400 + 50 * i, seed=10 + i, awkward=0.02) for i in range(len(fmts) + 2)]
    given, want = [], []
    (tmp_path / "plain.log").write_bytes(parts[0])
    given.append("plain.log")
    want.append({"kind": "file", "compression": None, "bytes_total": len(parts[0])})
    for fmt, part in zip(fmts, parts[1:]):
        name = f"part.{fmt}.log"
        (tmp_path / name).write_bytes(compress_bytes(fmt, part))
        given.append(name)
        want.append({"kind": "file", "compression": fmt, "bytes_total": (tmp_path / name).stat().st_size})
    given.append("-")  # the last part comes on a pipe
    want.append({"kind": "stream", "compression": None, "bytes_total": None})
    r = ok(run_process(tmp_path, *given, cwd=tmp_path, input=parts[-1], extra=SMALL_TASKS))
    whole = b"".join(parts)
    assert r.out == default_pipeline(whole)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, whole)
    assert len(r.inputs) == len(given)
    for entry, name, part, w in zip(r.inputs, given, parts, want):
        read = w["bytes_total"] if w["bytes_total"] is not None else len(part)
        assert_input(entry, name=name, lines=part.count(b"\n"), bytes_read=read, **w)


SAME_KINDS = ["stdin", "gzip-file", "zstd-stdin", "bzip2-and-xz-files"]


@pytest.mark.parametrize("kind", SAME_KINDS)
def test_every_input_kind_same_output_and_counts_at_any_worker_count(tmp_path: Path, workers: int, kind: str) -> None:
    data = log_bytes(2500, seed=5, awkward=0.02)
    inputs: tuple[str, ...]
    stdin_bytes = None
    if kind == "stdin":
        inputs, stdin_bytes = ("-",), data
    elif kind == "gzip-file":
        (tmp_path / "in.gz").write_bytes(compress_bytes("gzip", data))
        inputs = (str(tmp_path / "in.gz"),)
    elif kind == "zstd-stdin":
        inputs, stdin_bytes = ("-",), compress_bytes("zstd", data)
    else:
        cut = data.index(b"\n", len(data) // 3) + 1
        (tmp_path / "a").write_bytes(compress_bytes("bzip2", data[:cut]))
        (tmp_path / "b").write_bytes(compress_bytes("xz", data[cut:]))
        inputs = (str(tmp_path / "a"), str(tmp_path / "b"))
    r = ok(run_process(tmp_path, *inputs, workers=workers, input=stdin_bytes, extra=(*SMALL_TASKS, "--trace")))
    assert r.out == default_pipeline(data)[0]
    assert r.stats is not None
    assert_default_counts(r.stats, data)
    assert r.stats["system"]["state"] == "done"
    assert sum(e["lines"] for e in r.inputs) == 2500
    assert {e["state"] for e in r.inputs} == {"done"}


# ---------------------------------------------------------------------------------------------
# property: files split anywhere at line ends, some gzipped, are the one file


LINE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=25)


@st.composite
def split_content(draw: Any) -> tuple[list[bytes], list[bool]]:
    lines = draw(st.lists(LINE_TEXT, max_size=40))
    final_newline = draw(st.sampled_from([True, True, True, False]))
    n_files = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.integers(0, len(lines)), min_size=n_files - 1, max_size=n_files - 1)))
    bounds = [0, *cuts, len(lines)]
    parts = []
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        chunk = lines[lo:hi]
        last = i == len(bounds) - 2
        text = "\n".join(chunk) + ("\n" if chunk and (final_newline or not last) else "")
        parts.append(text.encode())
    packed = draw(st.lists(st.booleans(), min_size=len(parts), max_size=len(parts)))
    return parts, packed


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=split_content())
def test_files_split_at_line_ends_give_the_single_files_output(case: tuple[list[bytes], list[bool]]) -> None:
    parts, packed = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = []
        for i, (part, pack) in enumerate(zip(parts, packed)):
            path = folder / f"part{i}.log"
            path.write_bytes(gzip.compress(part) if pack else part)
            paths.append(path)
        config = {"processors": [{"type": "line_counter", "id": "num", "format": "{count}:{line}"}]}
        r = run_pipeline(config, paths, workers=2, task_bytes=1024, batch_lines=3)
        whole = b"".join(parts)
        want = b"".join(
            b"%d:%s\n" % (n, line.encode("utf-8", "surrogateescape")) for n, line in enumerate(split_lines(whole), 1)
        )
        assert r.output == want
        assert [e["lines"] for e in r.stats["inputs"]] == [len(split_lines(p)) for p in parts]
        assert [e["compression"] for e in r.stats["inputs"]] == ["gzip" if p else None for p in packed]
