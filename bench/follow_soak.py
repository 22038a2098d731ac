"""The follow soak: hours of following, compressed into minutes; memory over time, exact output.

    python -m bench.follow_soak                # 10 minutes
    python -m bench.follow_soak --minutes 60

It runs ``mpobs process app.log -F -o out --checkpoint ck --dashboard`` while a writer
appends ``--rate`` lines a second (default 2,000: a day of a busy service's log every
few minutes), renames the log away every ``--rotate-every`` seconds (logrotate's
create; the generation before the last is deleted, as ``rotate 1`` does) and renames
mpobs's own output away with a SIGHUP each time too; one client polls /stats. It
samples the RSS of the whole process tree every second. Memory is "flat" when the
tree's RSS in the last quarter is within 10 % of the first quarter. At the end
(SIGTERM) every line written must be in the outputs exactly once, in order. Writes
``bench/results/follow_soak.json`` (with the RSS series) and ``follow_soak.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.report import machine, machine_line
from bench.rows import kill_if_running
from bench.soak import MemorySeries, flat
from bench.stats_load import Client, free_port, wait_up

HERE = Path(__file__).resolve().parent
CONFIG = {
    "processors": [
        {"type": "line_counter", "id": "n", "format": "{count}|{line}"},
        {"type": "tag_extractor", "id": "tags"},
    ]
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.follow_soak", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=2000, help="lines appended a second")
    ap.add_argument("--rotate-every", type=float, default=30.0, help="seconds between rotations")
    ap.add_argument("--work", type=Path, default=HERE / "data" / "follow-soak")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    return ap.parse_args(argv)


def write_log(log: Path, out: Path, pid: int, rate: int, rotate_every: float, stop: threading.Event) -> int:
    """Append ``rate`` lines a second in 10 slices, rotating the log and the output; returns lines written."""
    n, last_rotation = 0, time.monotonic()
    f = open(log, "a", encoding="utf-8")  # noqa: SIM115 - reopened at each rotation
    try:
        while not stop.is_set():
            t = time.monotonic()
            f.write(
                "".join(f"INFO [req-{(n + k) % 97}] request {n + k} served in {k % 50} ms\n" for k in range(rate // 10))
            )
            f.flush()
            n += rate // 10
            if t - last_rotation >= rotate_every:
                last_rotation = t
                f.close()
                for path in (log, out):
                    old = path.with_name(path.name + ".1")
                    if old.exists() and path == log:
                        old.unlink()  # rotate 1: only the last generation is kept (it must be read by now)
                    elif old.exists():
                        old.rename(path.with_name(f"{path.name}.{int(t)}"))  # keep every output generation
                    path.rename(old)
                    path.touch()
                os.kill(pid, signal.SIGHUP)
                f = open(log, "a", encoding="utf-8")  # noqa: SIM115
            stop.wait(max(0.0, 0.1 - (time.monotonic() - t)))
    finally:
        f.close()
    return n


def outputs_in_order(out: Path) -> list[Path]:
    stamped = sorted(out.parent.glob(out.name + ".[0-9]*"), key=lambda p: int(p.suffix[1:]))
    return [p for p in stamped if p.suffix != ".1"] + [out.with_name(out.name + ".1"), out]


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    for p in a.work.iterdir():
        p.unlink()
    log, out, ck, config = a.work / "app.log", a.work / "out", a.work / "ck.json", a.work / "config.json"
    config.write_text(json.dumps(CONFIG))
    log.touch()
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mpobs",
        "process",
        str(log),
        "-F",
        "-c",
        str(config),
        "-w",
        "2",
        "-q",
        "-o",
        str(out),
        "--checkpoint",
        str(ck),
        "--dashboard",
        "--dashboard-port",
        str(port),
        "--linger",
        "0",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    stop = threading.Event()
    mem = MemorySeries(proc.pid, stop)
    written: list[int] = []
    try:
        wait_up(port)
        mem.start()
        client = Client(port, 1.0, stop)
        client.start()
        writer = threading.Thread(
            target=lambda: written.append(write_log(log, out, proc.pid, a.rate, a.rotate_every, stop))
        )
        writer.start()
        time.sleep(a.minutes * 60)
        stop.set()
        writer.join()
        lines = written[0]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the checkpoint holds every line
            try:
                if json.loads(ck.read_text())["lines"] == lines:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        kill_if_running(proc)
    got = b"".join(p.read_bytes() for p in outputs_in_order(out) if p.exists())
    exact = _numbered(got, lines)
    result: dict[str, Any] = {
        "machine": machine(),
        "minutes": a.minutes,
        "rate": a.rate,
        "rotate_every_s": a.rotate_every,
        "lines": lines,
        "exit_code": proc.returncode,
        "exact": exact,
        "rss": flat(mem.series, "rss_mb"),
        "anon": flat(mem.series, "anon_mb"),
        "series": mem.series,
        "stderr_tail": err.decode()[-2000:],
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "follow_soak.json").write_text(json.dumps(result, indent=1))
    r, an = result["rss"], result["anon"]
    md = (
        f"# Follow soak\n\n{machine_line(result['machine'])}\n\n"
        f"{a.minutes:g} min at {a.rate:,} lines/s ({lines:,} lines), a rotation of the log and of the output "
        f"every {a.rotate_every:g} s; exit {proc.returncode}; every line once and in order: {exact}\n\n"
        "| tree | first quarter | last quarter | ratio | max |\n|---|---|---|---|---|\n"
        f"| RSS | {r['first_quarter_mb']} MB | {r['last_quarter_mb']} MB | {r['ratio']} | {r['max_mb']} MB |\n"
        f"| anonymous | {an['first_quarter_mb']} MB | {an['last_quarter_mb']} MB | {an['ratio']} | "
        f"{an['max_mb']} MB |\n"
    )
    (a.out / "follow_soak.md").write_text(md)
    print(md)
    return 0 if exact and proc.returncode == 0 else 1


def _numbered(got: bytes, lines: int) -> bool:
    """Line k of the outputs put together is ``k|...request k-1...``: each line once, in order."""
    for k, row in enumerate(got.splitlines(), 1):
        if not row.startswith(f"{k}|INFO".encode()) or f" request {k - 1} ".encode() not in row:
            return False
    return len(got.splitlines()) == lines


if __name__ == "__main__":
    sys.exit(main())
