"""The --save-traces file: every traced line of a run, recorded a batch at a time, expanded when read.

Tracing every line with one document per line cost a 2,000,000-line run 30 s of
building, pickling and JSON (0.08x the plain loop). So the file records what each
processor did to a batch, not to each line, and a reader replays it.

The file is JSON Lines. The first line is the header::

    {"format": "mpobs-traces", "version": 2, "inputs": [[name, given], ...],
     "processors": [{"id", "inputs": [[source, route or null], ...], "routes": [...]}, ...],
     "order": [processor positions in run order], "sinks": [positions]}

Every other line is one batch's traced lines (``BatchRecorder``), in the order the
coordinator received them::

    {"k": input number, "off": run line - line in that input,
     "first": n, "n": count | "nums": [n, ...],     the traced lines: a range, or listed
     "orig": [text, ...],                          their text as read
     "steps": [[p, timestamp, out, failed], ...]}   processor p's step, in run order

``out`` is what the step emitted of the traced lines: ``[nums, texts, tags]`` for a
processor, ``{"route": [nums, texts, tags], ...}`` for a router. ``nums`` is 0 when
it emitted the lines it took, in place (else the list). ``texts`` and ``tags`` are 0
when each emitted line kept the text and tags it came in with: the item at the same
position when ``nums`` is 0, else the one with its line number (said only when no
line came in twice); otherwise they are listed (tags null: none yet). ``failed`` is
``[[n, "Type: message"], ...]`` or 0. A fifth element, 1, says the step's input had
tags although its traced lines, merged from branches, may not. A processor whose input
held none of the traced lines has no step.

``read_traces`` replays a record through ``mpobs.tracing.traces.BatchTrace``, the code that
builds /trace's traces, so each line's document is the same as a live trace's. A
file written by mpobs before version 2 (a document a line) is read as it is.
"""

from __future__ import annotations

import itertools
import json
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from mpobs.errors import InputError
from mpobs.pipeline.batch import EMPTY, NO_TAGS, Batch, merge
from mpobs.pipeline.dag import INPUT, Node, Pipeline, as_batch, gather
from mpobs.pipeline.processors import ErrorList
from mpobs.tracing.traces import BatchTrace, describe, expand

FORMAT = "mpobs-traces"
VERSION = 2

#: One step's output: [nums or 0, texts or 0, tags or 0 or None].
Out = list[Any]


def header(pipeline: Pipeline, inputs: Sequence[tuple[str, str]]) -> bytes:
    """The file's first line: the DAG the records are replayed through, and the run's inputs."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "inputs": [list(i) for i in inputs],
        "processors": [
            {"id": n.id, "inputs": [list(i) for i in n.inputs], "routes": list(n.proc.routes)} for n in pipeline.nodes
        ],
        "order": [n.index for n in pipeline.order],
        "sinks": [n.index for n in pipeline.sinks],
    }
    return json.dumps(doc).encode() + b"\n"


class BatchRecorder:
    """A step observer (mpobs.pipeline.dag.StepObserver) that records one batch's traced lines for the file.

    When every line of the batch is traced (``--trace-sample 1``) the steps' own
    lists are recorded, and the checks that let a step say 0 ("as it came in") are
    list comparisons done in C: the cost is per batch and per byte, not per line
    (about 1 ms for 5,000 lines of the default pipeline). Otherwise each batch a
    step sees is first cut down to the traced lines (a binary search per traced line).
    """

    def __init__(self, nums: list[int], batch: Batch, clock: Any = time.time) -> None:
        """``nums``: the traced lines of ``batch``, a batch of consecutive input lines."""
        self.clock = clock
        self.all = len(nums) == len(batch.nums)
        first = batch.nums[0] if batch.nums else 0
        self.root = Batch(list(nums), [batch.texts[n - first] for n in nums] if not self.all else list(batch.texts))
        root = batch if self.all else self.root
        self.steps: list[list[Any]] = []
        # id(real batch) -> (real batch, its traced lines); the real batch is kept so its id is not reused.
        self._cut: dict[int, tuple[Batch, Batch]] = {id(batch): (batch, root)}
        self._consecutive = batch.nums if self.all else None  # a nums list known to hold consecutive numbers

    def _traced(self, b: Batch) -> Batch:
        if self.all:
            return b
        known = self._cut.get(id(b))
        if known is not None and known[0] is b:
            return known[1]
        idx: list[int] = []
        b_nums = b.nums
        for n in self.root.nums:
            lo, hi = bisect_left(b_nums, n), bisect_right(b_nums, n)
            if lo < hi:
                idx += range(lo, hi)
        cut = b.take(idx) if len(idx) < len(b_nums) else b
        self._cut[id(b)] = (b, cut)
        return cut

    def step(self, node: Node, inp: Batch, out: Batch | dict[str, Batch], errors: ErrorList) -> None:
        now = self.clock()
        inp = self._traced(inp)
        if not inp.nums:
            return
        if isinstance(out, dict):
            spec: Out | dict[str, Out] = {route: self._out(inp, self._traced(b)) for route, b in out.items()}
        else:
            spec = self._out(inp, self._traced(out))
        failed: Any = 0
        if errors:
            if self.all:
                failed = [[n, describe(e)] for n, _, e in errors]
            else:
                traced = set(self.root.nums)
                failed = [[n, describe(e)] for n, _, e in errors if n in traced] or 0
        step = [node.index, now, spec, failed]
        if not self.all and inp.tags is not None:
            # Merged from branches, the real input has tags when any branch had them; the
            # traced lines alone may come only from untagged ones, and () is not "no tags yet".
            step.append(1)
        self.steps.append(step)

    def _out(self, inp: Batch, out: Batch) -> Out:
        if out.nums is inp.nums or out.nums == inp.nums:
            nums: Any = 0
            texts, tags = inp.texts, inp.tags
        else:
            nums = out.nums
            pos = self._positions(inp.nums, out.nums)
            if pos is None:
                return [list(nums), list(out.texts), _copy(out.tags)]
            texts = list(map(inp.texts.__getitem__, pos))
            tags = None if inp.tags is None else list(map(inp.tags.__getitem__, pos))
        # Copies: a later step (a python function) may change these lists in place.
        return [
            nums if nums == 0 else list(nums),
            0 if out.texts is texts or out.texts == texts else list(out.texts),
            0 if out.tags is tags or out.tags == tags else _copy(out.tags),
        ]

    def _positions(self, in_nums: list[int], out_nums: list[int]) -> list[int] | None:
        if not out_nums:
            return []
        if in_nums is self._consecutive and in_nums[0] <= out_nums[0] and out_nums[-1] <= in_nums[-1]:
            return list(map(in_nums[0].__rsub__, out_nums))
        return positions(in_nums, out_nums)

    def line(self, input_k: int, offset: int) -> bytes:
        """The record, one line of the file (ASCII: JSON escapes the rest)."""
        nums = self.root.nums
        doc: dict[str, Any] = {"k": input_k, "off": offset}
        if nums and nums[-1] - nums[0] + 1 == len(nums):  # never decreasing and no repeats: a range
            doc["first"], doc["n"] = nums[0], len(nums)
        else:
            doc["nums"] = nums
        doc["orig"] = self.root.texts
        doc["steps"] = self.steps
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def __len__(self) -> int:
        return len(self.root.nums)


def _copy(tags: list[tuple[str, ...]] | None) -> list[tuple[str, ...]] | None:
    return None if tags is None else list(tags)


def positions(in_nums: list[int], out_nums: list[int]) -> list[int] | None:
    """Where each of ``out_nums`` is in ``in_nums``, or None if one is not there or ``in_nums`` repeats one."""
    index = dict(zip(in_nums, range(len(in_nums))))
    if len(index) != len(in_nums):
        return None
    pos = list(map(index.get, out_nums))
    return None if None in pos else pos  # type: ignore[return-value]


class TraceFileError(InputError):
    """A file that is not an mpobs --save-traces file, or one this mpobs cannot read."""


def read_traces(path: str) -> Iterator[dict[str, Any]]:
    """Every line's trace in the file, as /trace shows one, in the order the run saved them."""
    return iter(TraceReader(path))


class TraceReader:
    """Iterates a --save-traces file's traces; ``truncated`` is True after a last line cut short.

    ``lines``: only these lines, by run line number (int) or line id ("name:N"); the
    records that hold none of them are not replayed.
    """

    def __init__(self, path: str, lines: Iterable[int | str] | None = None) -> None:
        self.path = path
        self.truncated = False
        self.empty = False
        self.lines = None if lines is None else set(lines)
        self._nums = {n for n in self.lines or () if isinstance(n, int)}
        self._ids = {i for i in map(_split_id, self.lines or ()) if i is not None}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below, also by a reader that stops early
        except OSError as err:
            raise TraceFileError(f"traces file {self.path!r}: cannot read it: {err.strerror or err}") from err
        with f:
            first = f.readline()
            self.empty = not first  # a run before version 2 that traced nothing
            head = self._parse(first, 1)
            if head is None:
                return
            if "line_id" in head:  # version 1: a document a line
                docs = (self._parse(raw, k) for k, raw in enumerate(f, 2))
                yield from (d for d in itertools.chain([head], docs) if d is not None and self._wanted(d))
                return
            k = 1
            try:
                replay = _Replay(self._check_header(head))
                want = None if self.lines is None else replay.wanted(self._nums, self._ids)
                for k, raw in enumerate(f, 2):
                    rec = self._parse(raw, k)
                    if rec is not None and (want is None or want(rec)):
                        yield from (t for t in replay.traces(rec) if self._wanted(t))
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
                msg = f"{self.path!r} line {k} is damaged ({type(err).__name__}: {err}): not what mpobs wrote"
                raise TraceFileError(msg) from None

    def _wanted(self, trace: dict[str, Any]) -> bool:
        if self.lines is None or trace["line_number"] in self._nums:
            return True
        return (trace["line_id"].rpartition(":")[0], trace["file_line"]) in self._ids

    def _parse(self, raw: bytes, k: int) -> Any:
        if not raw:
            return None
        if not raw.endswith(b"\n"):
            self.truncated = True  # the run was killed while writing it: everything before is whole
            return None
        try:
            doc = json.loads(raw)
        except ValueError as err:
            msg = f"{self.path!r} line {k} is not JSON ({err}): not an mpobs --save-traces file, or damaged"
            raise TraceFileError(msg) from None
        if not isinstance(doc, dict):
            raise TraceFileError(f"{self.path!r} line {k}: expected an object, not an mpobs --save-traces file")
        return doc

    def _check_header(self, head: dict[str, Any]) -> dict[str, Any]:
        if head.get("format") != FORMAT:
            raise TraceFileError(
                f'{self.path!r} is not an mpobs --save-traces file (its first line has no "format": "{FORMAT}")'
            )
        if head.get("version") != VERSION:
            raise TraceFileError(
                f"{self.path!r} is an mpobs --save-traces file of version {head.get('version')!r}; "
                f"this mpobs reads version {VERSION}"
            )
        return head


def _split_id(line: int | str) -> tuple[str, int] | None:
    """ "name:N" -> (name, N); None for a run line number or an id without a line number."""
    if not isinstance(line, str):
        return None
    name, _, n = line.rpartition(":")
    return (name, int(n)) if name and n.isdecimal() else None


class _Replay:
    """Runs records back through the DAG's wiring and BatchTrace, without the processors."""

    def __init__(self, head: dict[str, Any]) -> None:
        procs = head["processors"]
        self.ids = [p["id"] for p in procs]
        self.inputs = [tuple(i) for i in head["inputs"]]
        self.order = [(p, [(src, route) for src, route in procs[p]["inputs"]]) for p in head["order"]]
        self.sinks = [self.ids[p] for p in head["sinks"]]

    def wanted(self, nums: set[int], ids: set[tuple[str, int]]) -> Callable[[dict[str, Any]], bool]:
        """Whether a record holds one of the lines ``nums`` (run line numbers) or ``ids`` ((input name, line))."""
        by_input: dict[int, set[int]] = {}
        names = {name: k for k, (name, _) in enumerate(self.inputs)}
        for name, n in ids:
            if name in names:
                by_input.setdefault(names[name], set()).add(n)

        def holds(rec: dict[str, Any]) -> bool:
            wanted = nums | {n + rec["off"] for n in by_input.get(rec["k"], ())}
            if "nums" in rec:
                return not wanted.isdisjoint(rec["nums"])
            return any(rec["first"] <= n < rec["first"] + rec["n"] for n in wanted)

        return holds

    def traces(self, rec: dict[str, Any]) -> Iterator[dict[str, Any]]:
        nums = list(range(rec["first"], rec["first"] + rec["n"])) if "nums" not in rec else rec["nums"]
        root = Batch(nums, rec["orig"])
        trace = BatchTrace.of_all(root)
        outs: dict[str, Batch | dict[str, Batch]] = {INPUT: root}
        steps = iter(rec["steps"])
        step = next(steps, None)
        for p, inputs in self.order:
            pid = self.ids[p]
            if step is None or step[0] != p:  # none of the traced lines reached it
                outs[pid] = EMPTY
                continue
            inp = gather(inputs, outs)
            _, now, spec, failed = step[:4]
            if len(step) > 4 and inp.tags is None:  # the real input had tags (see BatchRecorder.step)
                inp = Batch(inp.nums, inp.texts, [NO_TAGS] * len(inp.nums))
            if isinstance(spec, dict):
                out: Batch | dict[str, Batch] = {route: _rebuild(inp, s) for route, s in spec.items()}
            else:
                out = _rebuild(inp, spec)
            trace.record(p, inp, out, dict(failed) if failed else None, now)
            outs[pid] = out
            step = next(steps, None)
        final = merge([as_batch(outs[s]) for s in self.sinks])
        for t in trace.finish(final, rec["k"], rec["off"]):
            yield expand(t, self.inputs, self.ids)


def _rebuild(inp: Batch, spec: Out) -> Batch:
    nums, texts, tags = spec
    in_texts: list[str] | None
    if nums == 0:
        nums, in_texts, in_tags = inp.nums, inp.texts, inp.tags
    else:
        pos = positions(inp.nums, nums) if texts == 0 or tags == 0 else None
        in_texts = list(map(inp.texts.__getitem__, pos)) if pos is not None else None
        in_tags = list(map(inp.tags.__getitem__, pos)) if pos is not None and inp.tags is not None else None
    out_texts = in_texts if texts == 0 else texts
    out_tags = in_tags if tags == 0 else None if tags is None else list(map(tuple, tags))
    return Batch(nums, out_texts, out_tags)  # type: ignore[arg-type]
