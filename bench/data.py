"""The benchmark's input logs: generated once per (lines, seed, generator), reused, kept in page cache."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path


def _generator_digest() -> str:
    """A short hash of mpobs.inputs.loggen's source: a changed generator means a new log."""
    import mpobs.inputs.loggen as loggen

    return hashlib.sha256(inspect.getsource(loggen).encode()).hexdigest()[:12]


def ensure_log(data_dir: Path, lines: int, seed: int, say: Callable[[str], object] = print) -> Path:
    """The path of a ``lines``-line log from ``mpobs.inputs.loggen.generate_file(path, lines, seed=seed)``.

    Reused when its metadata (lines, seed, generator hash, byte size) still matches the file.
    """
    from mpobs.inputs.loggen import generate_file

    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"log-{lines}-seed{seed}.log"
    meta_path = path.with_suffix(".json")
    want = {"lines": lines, "seed": seed, "generator": _generator_digest()}
    try:
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in want} == want and path.stat().st_size == meta.get("bytes"):
            return path
    except (OSError, ValueError):
        pass
    say(f"generating {path} ({lines:,} lines, seed {seed}) ...")
    tmp = path.with_suffix(".tmp")
    size = generate_file(str(tmp), lines, seed=seed)
    os.replace(tmp, path)
    meta_path.write_text(json.dumps(dict(want, bytes=size)) + "\n")
    return path


def warm(path: Path) -> None:
    """Read the file once so every row starts with it in the page cache, as the design's figures do."""
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def compile_engine() -> None:
    """Byte-compile mpobs and dashboard_app, as ``pip install`` does for an installed package.

    An editable install (scripts/setup.sh) runs them from the checkout; with
    PYTHONDONTWRITEBYTECODE set (it is on the benchmark machine) Python then
    compiles every module from source at every start, about 50 ms of each run
    that no installed mpobs pays. Stale bytecode is never used: Python checks it
    against the source's mtime and size.
    """
    import compileall

    import dashboard_app
    import mpobs

    for pkg in (mpobs, dashboard_app):
        compileall.compile_dir(os.path.dirname(pkg.__file__), quiet=1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
