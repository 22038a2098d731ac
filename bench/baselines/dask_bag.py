"""dask.bag script: the job as a Dask user would write it, on a LocalCluster of 2 processes (1 thread each).

Same work and output bytes as plain.py. Line numbers run across the whole file, so it
takes two passes over the bag, as a user would: count each partition's lines, then
number and filter each partition from its first line number. Partitions are 16 MiB
(``read_text``'s blocksize, cut on line ends), the size mpobs's Dask executor uses;
their results are written in order as they come, so the output is never all in memory.
Cluster start and stop are timed too, as for ``mpobs --executor dask``.
Usage: python dask_bag.py INPUT OUTPUT [PROCESSES]
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
from collections.abc import Iterable

LEVEL_RX = re.compile(r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b")
KEEP = frozenset({"ERROR", "WARN", "WARNING", "INFO"})
BLOCKSIZE = 16 << 20


def count(lines: Iterable[str]) -> list[int]:
    return [sum(1 for _ in lines)]


def work(lines: Iterable[str], first: list[int]) -> list[str]:
    """One partition, numbered from ``first[0]``: the kept lines, as one string."""
    search = LEVEL_RX.search
    out = []
    for n, line in enumerate(lines, first[0]):
        if line.endswith("\n"):
            line = line[:-1]
        t = f"Line {n}: {line}"
        m = search(t)
        if m is not None and m[1] in KEEP:
            out.append(t + "\n")
    return ["".join(out)]


def main(src: str, dst: str, processes: int = 2) -> None:
    import dask.bag as db
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=processes,
            threads_per_worker=1,
            processes=True,
            memory_limit=0,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        lines = db.read_text(src, blocksize=BLOCKSIZE, encoding="utf-8", errors="surrogateescape")
        sizes = [n for [n] in client.gather(client.compute(lines.map_partitions(count).to_delayed()))]
        firsts = list(itertools.accumulate([1, *sizes[:-1]]))
        numbered = lines.map_partitions(work, db.from_sequence(firsts, npartitions=len(firsts)))
        parts = client.compute(numbered.to_delayed())
        with open(dst, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as out:
            for fut in parts:  # in order; each is released once written
                [text] = fut.result()
                out.write(text)
                fut.release()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
