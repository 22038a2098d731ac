"""Input kinds (issue 13): the same log through a pipe, gzip, zstd and 16 files, against the plain-file run.

Each round runs every command once, back to back, so the pairs see the same machine;
a figure is the median of the rounds' ratios (the first command's time over the
second's: above 1 is the second faster). Every mpobs output must equal the plain-file
run's (sha256), or the row fails.
"""

from __future__ import annotations

import gzip
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import BASELINES_DIR
from bench.data import sha256_file
from bench.rows import mpobs_command

#: Files the 16-file row splits the log into (at line ends, about equal sizes).
PARTS = 16


def prepare(log: Path, say: Callable[[str], object]) -> dict[str, Any]:
    """The log as .gz (gzip's default level, as logrotate writes), .zst (zstd's default) and 16 parts; cached."""
    import zstandard

    made: dict[str, Any] = {}
    gz, zst = log.with_name(log.name + ".gz"), log.with_name(log.name + ".zst")
    if not _fresh(gz, log):
        say(f"  compressing {log.name} with gzip -6 ...")
        with open(log, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    if not _fresh(zst, log):
        say(f"  compressing {log.name} with zstd -3 ...")
        with open(log, "rb") as src, open(zst, "wb") as dst:
            zstandard.ZstdCompressor(level=3, write_checksum=True).copy_stream(src, dst)
    parts_dir = log.with_name(log.name + ".parts")
    parts = [parts_dir / f"part-{k:02d}.log" for k in range(PARTS)]
    if not all(_fresh(p, log) for p in parts):
        parts_dir.mkdir(exist_ok=True)
        data = log.read_bytes()
        at = 0
        for k, p in enumerate(parts):
            end = len(data) if k == PARTS - 1 else data.index(b"\n", max(at, len(data) * (k + 1) // PARTS)) + 1
            p.write_bytes(data[at:end])
            at = end
    made.update(gz=gz, zst=zst, parts=parts)
    return made


def _fresh(path: Path, src: Path) -> bool:
    return path.exists() and path.stat().st_mtime >= src.stat().st_mtime


def commands(log: Path, made: dict[str, Any], work: Path) -> dict[str, str]:
    """Shell commands by key; mpobs ones write ``work/<key>.out``."""
    mp = " ".join(shlex.quote(a) for a in mpobs_command())
    plain = f"{shlex.quote(sys.executable)} {shlex.quote(str(BASELINES_DIR / 'plain.py'))}"
    q = shlex.quote

    def run(inputs: str, key: str) -> str:
        return f"{mp} process {inputs} --workers 2 -q -o {q(str(work / (key + '.out')))}"

    # The baselines last: a run right after one of their 5 s full loads is slower (bench/README.md,
    # "Trusting the figures"), and the zstd row, run after `zcat | plain`, read 0.80x where it
    # reads 1.1x in alternation with the .gz alone.
    return {
        "file": run(q(str(log)), "file"),
        "stdin": f"cat {q(str(log))} | " + run("-", "stdin"),
        "gzip": run(q(str(made["gz"])), "gzip"),
        "zstd": run(q(str(made["zst"])), "zstd"),
        "files16": run(" ".join(q(str(p)) for p in made["parts"]), "files16"),
        "cat_plain": f"cat {q(str(log))} | {plain} /dev/stdin {q(str(work / 'cat_plain.out'))}",
        "zcat_plain": f"zcat {q(str(made['gz']))} | {plain} /dev/stdin {q(str(work / 'zcat_plain.out'))}",
    }


#: (key, what, numerator command, denominator command, least ratio)
TARGETS = (
    ("stdin_vs_file", "`cat big.log | mpobs process -` >= 0.85x the file run", "file", "stdin", 0.85),
    ("stdin_vs_cat_plain", "`cat | mpobs -` faster than `cat | plain loop`", "cat_plain", "stdin", 1.0),
    ("gzip_vs_zcat_plain", "big.log.gz >= 1.5x `zcat big.log.gz | plain loop`", "zcat_plain", "gzip", 1.5),
    ("gzip_vs_file", "big.log.gz >= 0.7x the plain-file run", "file", "gzip", 0.7),
    ("zstd_vs_file", "big.log.zst >= 0.85x the plain-file run", "file", "zstd", 0.85),
    ("files16_vs_file", "16 files >= 0.95x the one-file run", "file", "files16", 0.95),
)


def input_kinds(log: Path, work: Path, rounds: int, say: Callable[[str], object]) -> dict[str, Any]:
    made = prepare(log, say)
    cmds = commands(log, made, work)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for r in range(rounds):
        # Untimed: the round's first timed run then follows an mpobs run, as the others do, not the
        # last round's baseline.
        subprocess.run(
            ["bash", "-c", cmds["file"]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for key, cmd in cmds.items():
            t0 = time.perf_counter()
            proc = subprocess.run(
                ["bash", "-o", "pipefail", "-c", cmd],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            took = time.perf_counter() - t0
            if proc.returncode != 0:
                return {"error": f"{key}: exit {proc.returncode}: {proc.stderr.decode('utf-8', 'replace')[-300:]}"}
            times[key].append(took)
            say(f"  round {r + 1}/{rounds}  inputs {key:<12} {took:8.3f} s")
    ref = sha256_file(work / "file.out")
    for key in ("stdin", "gzip", "zstd", "files16"):
        if sha256_file(work / f"{key}.out") != ref:
            return {"error": f"the {key} run's output differs from the plain-file run's"}
    for key in ("cat_plain", "zcat_plain"):
        if sha256_file(work / f"{key}.out") != sha256_file(work / "file.out"):
            # The plain loop writes what the default pipeline does: the same bytes.
            return {"error": f"the {key} baseline's output differs from mpobs's"}
    out: dict[str, Any] = {"seconds": {k: round(statistics.median(v), 3) for k, v in times.items()}}
    for key, _, num, den, _ in TARGETS:
        out[key] = round(statistics.median(a / b for a, b in zip(times[num], times[den])), 3)
    for key in cmds:
        (work / f"{key}.out").unlink(missing_ok=True)
    return out


def gz_of(log: Path, say: Callable[[str], object]) -> Path:
    """``log`` gzipped (level 1: this one is for the memory row, where the level does not matter); cached."""
    gz = log.with_name(log.name + ".rss.gz")
    if not _fresh(gz, log):
        say(f"  compressing {log.name} with gzip -1 for the memory row ...")
        subprocess.run(f"gzip -1 -c {shlex.quote(str(log))} > {shlex.quote(str(gz))}", shell=True, check=True)
    return gz
