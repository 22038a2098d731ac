"""The compiled DAG: processors in topological order, their edges, and running one batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from mpobs.errors import ConfigError
from mpobs.metrics.histogram import BUCKET_BY_BITS
from mpobs.metrics.layout import DOING_FIELDS, NF, PROC_WIDTH
from mpobs.pipeline.batch import EMPTY, Batch, merge
from mpobs.pipeline.processors import ErrorList, Processor
from mpobs.pipeline.processors.base import Position

#: The name of the input file as an edge source ("inputs": ["input"]).
INPUT = "input"

#: (processor position, line number, text, exception)
NodeErrors = list[tuple[int, int, str, BaseException]]


class Node:
    """One processor and where its lines come from: (processor id or INPUT, route or None)."""

    def __init__(self, index: int, proc: Processor, inputs: list[tuple[str, str | None]]) -> None:
        self.index = index  # position in the config list: the processor's row in every per-processor table
        self.proc = proc
        self.inputs = inputs
        self.consumers: list[str] = []

    @property
    def id(self) -> str:
        return self.proc.id


class StepObserver(Protocol):
    """Told about every step of a batch (tracing); see mpobs.tracing.traces."""

    def step(self, node: Node, inp: Batch, out: Batch | dict[str, Batch], errors: ErrorList) -> None: ...


class Pipeline:
    """Processors wired into a DAG, runnable one batch at a time.

    Output order: the sinks' lines merged by input line number; for one input
    line, sinks follow their order in the config.
    """

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes  # config order
        self.by_id = {n.id: n for n in nodes}
        for n in nodes:
            for src, _ in n.inputs:
                if src != INPUT:
                    self.by_id[src].consumers.append(n.id)
        self.order = _toposort(nodes, self.by_id)
        self.sinks = [n for n in nodes if not n.consumers]
        self.tags = list(dict.fromkeys(t for n in nodes for t in n.proc.tags_added))
        self.timed = [n.index for n in nodes if n.proc.times_calls]  # processors with a call histogram
        self.position = Position()  # set per task (``at``); shared by every step
        self.spec: Any = None  # mpobs.pipeline.config.PipelineSpec: how to build it again elsewhere
        for n in nodes:
            n.proc.position = self.position
        self.watch([0] * len(DOING_FIELDS))

    def watch(self, doing: Any) -> None:
        """Say what runs in ``doing`` (a worker's DOING_FIELDS in the stats segment, ``StatsSegment.doing``)."""
        self.doing = doing
        for n in self.nodes:
            n.proc.doing = doing

    def at(self, file: str, offset: int, input_index: int = 0) -> None:
        """The next batches are lines of input ``file``; a line's number there is its number minus ``offset``."""
        self.position.file, self.position.offset, self.position.input = file, offset, input_index

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def edges(self) -> list[dict[str, Any]]:
        """Every edge as {"from", "to", "route"}; "from" is "input" for the file."""
        return [{"from": src, "to": n.id, "route": route} for n in self.nodes for src, route in n.inputs]

    def describe(self) -> str:
        """The DAG as text, one processor a line, in run order (mpobs validate)."""
        lines = []
        for n in self.order:
            ins = ", ".join(src + (f".{r}" if r else "") for src, r in n.inputs)
            extra = f"  routes: {', '.join(n.proc.routes)}" if n.proc.routes else ""
            sink = "  [sink]" if not n.consumers else ""
            lines.append(f"{n.id} ({n.proc.type_name}) <- {ins}{extra}{sink}")
        return "\n".join(lines)

    def run_batch(
        self,
        batch: Batch,
        acc: list[int],
        errors: NodeErrors,
        observer: StepObserver | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> Batch:
        """Run one batch through every processor; return what the sinks emit.

        Adds to ``acc`` (``len(nodes) * PROC_WIDTH`` ints, per node in config order:
        ``segment.PROC_FIELDS`` then the batch call's bucket: what ``Layout.vector``
        takes) once per processor, and appends each failed line to ``errors``.
        """
        outs: dict[str, Batch | dict[str, Batch]] = {INPUT: batch}
        doing, pos = self.doing, self.position
        doing[1] = pos.input
        for node in self.order:
            inp = gather(node.inputs, outs)
            if not inp.texts:
                outs[node.id] = {} if node.proc.routes else EMPTY
                continue
            errs: ErrorList = []
            t0 = clock()
            doing[2], doing[3], doing[4] = inp.nums[0] - pos.offset, len(inp), t0
            doing[0] = node.index + 1
            try:
                res = node.proc.process(inp, errs)
            except Exception:
                errs = []
                res = _per_line(node.proc, inp, errs)
            t1 = clock()
            outs[node.id] = res
            base = node.index * PROC_WIDTH
            acc[base] += len(inp)
            acc[base + 1] += sum(map(len, res.values())) if isinstance(res, dict) else len(res)
            acc[base + 2] += len(errs)
            acc[base + 3] += t1 - t0
            acc[base + 4] += 1
            acc[base + NF + BUCKET_BY_BITS[(t1 - t0 - 1).bit_length()]] += 1
            if errs:
                errors.extend((node.index, n, t, e) for n, t, e in errs)
            if observer is not None:
                observer.step(node, inp, res, errs)
        doing[0] = 0
        sinks = self.sinks
        if len(sinks) == 1:
            return as_batch(outs[sinks[0].id])
        return merge([as_batch(outs[s.id]) for s in sinks])


def as_batch(res: Batch | dict[str, Batch]) -> Batch:
    """A step's output as one batch: a router's routes merged."""
    return merge(list(res.values())) if isinstance(res, dict) else res


def gather(inputs: list[tuple[str, str | None]], outs: dict[str, Batch | dict[str, Batch]]) -> Batch:
    """A node's input: the outputs (or routes) named by ``inputs``, merged by line number."""
    parts = []
    for src, route in inputs:
        res = outs[src]
        if isinstance(res, dict):
            parts.append(as_batch(res) if route is None else res.get(route, EMPTY))
        else:
            parts.append(res)
    return parts[0] if len(parts) == 1 else merge(parts)


def _per_line(proc: Processor, batch: Batch, errs: ErrorList) -> Batch | dict[str, Batch]:
    """Run a batch that raised again line by line: only the failing lines are lost."""
    done: list[Batch | dict[str, Batch]] = []
    for i in range(len(batch)):
        one = batch.take([i])
        try:
            done.append(proc.process(one, errs))
        except Exception as exc:
            errs.append((batch.nums[i], batch.texts[i], exc))
    if proc.routes:
        return {r: merge([d[r] for d in done if isinstance(d, dict) and r in d]) for r in proc.routes}
    return merge([d for d in done if isinstance(d, Batch)])


def _toposort(nodes: list[Node], by_id: dict[str, Node]) -> list[Node]:
    """Kahn's algorithm, config order among the ready; a cycle is a config error."""
    indeg = {n.id: sum(1 for src, _ in n.inputs if src != INPUT) for n in nodes}
    ready = [n for n in nodes if indeg[n.id] == 0]
    order: list[Node] = []
    while ready:
        node = ready.pop(0)
        order.append(node)
        for cid in node.consumers:
            indeg[cid] -= 1
            if indeg[cid] == 0:
                ready.append(by_id[cid])
                ready.sort(key=lambda n: n.index)
    if len(order) < len(nodes):
        raise ConfigError(f"the DAG has a cycle: {' -> '.join(_find_cycle(nodes, by_id, indeg))}")
    return order


def _find_cycle(nodes: list[Node], by_id: dict[str, Node], indeg: dict[str, int]) -> list[str]:
    # Walk inputs backwards among the nodes Kahn could not order until one repeats.
    stuck = {n.id for n in nodes if indeg[n.id] > 0}
    path: list[str] = []
    cur = next(n.id for n in nodes if n.id in stuck)
    while cur not in path:
        path.append(cur)
        cur = next(src for src, _ in by_id[cur].inputs if src in stuck)
    cycle = [*path[path.index(cur) :], cur]
    return cycle[::-1]
