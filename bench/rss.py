"""Peak memory of a run's whole process tree (coordinator, workers, dashboard), sampled from /proc.

Every ``interval`` seconds the sampler lists the tree with psutil (children,
recursive) and reads, per process, VmRSS and VmHWM from /proc/<pid>/status and
Pss from /proc/<pid>/smaps_rollup. It reports three figures:

- ``hwm_sum_mb``: the sum over every process ever seen of its own peak (VmHWM,
  kept by the kernel, so spikes between samples are not missed). This is an upper
  bound on the tree's peak: it adds peaks that may not coincide and counts shared
  pages (the forked interpreter, the stats segment) once per process. The targets
  are judged on this figure, so a PASS cannot come from a lucky sample.
- ``rss_peak_mb``: the largest sum of VmRSS over the tree at one sample (what
  adding up ``ps`` columns gives; may miss a spike shorter than the interval).
- ``pss_peak_mb``: the largest sum of Pss at one sample: shared pages split
  between the processes sharing them, the closest to the memory the run really uses.
- ``anon_peak_mb``: the largest sum of RssAnon at one sample: heap and stacks only,
  without file-backed pages (an mmap of the input counts in RSS and PSS, not here).
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field

import psutil


def _status_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                    key, val = line.split()[:2]
                    out[key.rstrip(":")] = int(val)
    except (OSError, ValueError):
        pass
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class TreeMemory:
    """Samples the memory of ``pid`` and its descendants until stopped."""

    pid: int
    interval: float = 0.05
    hwm_kb: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    rss_peak_kb: int = 0
    pss_peak_kb: int = 0
    anon_peak_kb: int = 0
    samples: int = 0
    max_procs: int = 0

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            kids = root.children(recursive=True)
        except psutil.Error:
            return
        pids = [self.pid] + [c.pid for c in kids]
        for kid in kids:
            if kid.pid not in self.names:
                try:
                    self.names[kid.pid] = f"child of {kid.ppid()}: {kid.name()}"
                except psutil.Error:
                    pass
        rss = pss = anon = 0
        for pid in pids:
            st = _status_kb(pid)
            if "VmHWM" in st:  # a zombie has none: keep its last reading
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), st["VmHWM"])
            rss += st.get("VmRSS", 0)
            anon += st.get("RssAnon", 0)
            pss += _pss_kb(pid)
        self.rss_peak_kb = max(self.rss_peak_kb, rss)
        self.pss_peak_kb = max(self.pss_peak_kb, pss)
        self.anon_peak_kb = max(self.anon_peak_kb, anon)
        self.samples += 1
        self.max_procs = max(self.max_procs, len(pids))

    def watch(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.sample()
            stop.wait(self.interval)

    def result(self) -> dict[str, object]:
        mb = 1024.0
        return {
            "hwm_sum_mb": round(sum(self.hwm_kb.values()) / mb, 1),
            "rss_peak_mb": round(self.rss_peak_kb / mb, 1),
            "pss_peak_mb": round(self.pss_peak_kb / mb, 1),
            "anon_peak_mb": round(self.anon_peak_kb / mb, 1),
            "processes_seen": len(self.hwm_kb),
            # Which process holds the memory: the first entry is the run's own process.
            "per_process_hwm_mb": [
                {
                    "pid": pid,
                    "process": "root" if pid == self.pid else self.names.get(pid, "child"),
                    "hwm_mb": round(kb / mb, 1),
                }
                for pid, kb in self.hwm_kb.items()
            ],
            "max_processes_at_once": self.max_procs,
            "samples": self.samples,
        }


def measure_tree(argv: list[str], timeout: float) -> dict[str, object]:
    """Run ``argv`` and sample its tree's memory; raises RuntimeError when the run fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree = TreeMemory(proc.pid)
    stop = threading.Event()
    watcher = threading.Thread(target=tree.watch, args=(stop,), daemon=True)
    watcher.start()
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        from bench.rows import kill_tree

        kill_tree(proc)  # type: ignore[arg-type]
        proc.communicate()
        raise RuntimeError(f"timed out after {timeout:g} s") from None
    finally:
        stop.set()
        watcher.join()
    if proc.returncode != 0:
        lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        raise RuntimeError(f"exit {proc.returncode}: {lines[-1][:200] if lines else 'no message'}")
    return dict(tree.result(), seconds=round(time.perf_counter() - t0, 3))
