"""The ``python`` processor: a user function, per line or per batch."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any, cast

from mpobs.metrics.histogram import BUCKET_BY_BITS, BUCKETS
from mpobs.pipeline.batch import Batch
from mpobs.pipeline.processors.base import ErrorList, Processor, Spec, register

#: What a user function may raise that is an error of the line it was given, not the end of
#: the worker: ``sys.exit()`` and a stray ``KeyboardInterrupt`` included (workers ignore SIGINT).
LINE_ERRORS = (Exception, SystemExit, KeyboardInterrupt)


def import_function(ref: str, spec: Spec) -> Callable[..., Any]:
    """``"package.module:name"`` -> the callable. The config file's folder is on sys.path."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise spec.error(f'function must look like "module:name", got {ref!r}')
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # an ImportError, or whatever the module raised while importing
        msg = f"cannot import module {module_name!r} for function {ref!r}: {type(err).__name__}: {err}"
        raise spec.error(msg) from err
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise spec.error(f"module {module_name!r} has no attribute {attr!r}") from err
    if not callable(obj):
        raise spec.error(f"{ref!r} is not callable")
    return obj


def _results(result: Any) -> list[str] | None:
    """A function's answer for one line as a list of output texts; None means drop."""
    if isinstance(result, str):
        return [result]
    if result is None:
        return None
    if isinstance(result, list) and all(isinstance(r, str) for r in result):
        return result
    msg = f"function must return a str, None or a list of str, got {type(result).__name__}"
    raise TypeError(msg)


@register("python")
class PythonFunction(Processor):
    """Calls ``function`` ("module:name").

    Per line (default): ``f(line: str) -> str | None | list[str]`` (replace, drop,
    or emit several). With ``"batch": true``: ``f(lines: list[str]) -> list`` of
    one such answer per line, called once per batch; if it raises, the batch is
    retried line by line (``f([line])``) so the failing lines are found; if it answers
    another count than it was given, every line of the batch is an error saying so.

    Every call is timed into ``calls`` (a histogram, then the calls' total ns), which
    the task moves into its count vector once per batch.
    """

    keys = frozenset({"function", "batch"})
    times_calls = True

    def __init__(self, pid: str, spec: Spec) -> None:
        super().__init__(pid, spec)
        self.batch = spec.get("batch", bool, False)
        self.ref = spec.get("function", str)
        self.func = import_function(self.ref, spec)
        self.calls = [0] * (BUCKETS + 1)
        #: Calls that timed out in an earlier run of the task (``Task.timed_out``, set per task):
        #: run-wide line -> seconds for a line's call; a batch call's first line -> seconds.
        self.timed_out_lines: dict[int, float] = {}
        self.timed_out_batches: dict[int, float] = {}

    def process(self, batch: Batch, errors: ErrorList) -> Batch:
        func = self.func
        answers: list[Any]
        if not self.batch:
            answers = self._per_line(func, batch, errors)
        elif self.timed_out_batches and batch.nums[0] in self.timed_out_batches:  # it timed out: line by line now
            self._timed(int(self.timed_out_batches[batch.nums[0]] * 1e9))  # the call that timed out, counted
            answers = self._per_line(lambda t: _one(func, t), batch, errors)
        else:
            t0 = time.perf_counter_ns()
            try:
                try:
                    # A copy: a function that changes its list in place must not change the
                    # batch other processors take (fan-out), nor what traces say came in.
                    answers = func(list(batch.texts))
                finally:
                    self._timed(time.perf_counter_ns() - t0)
                if _wrong_count(answers, len(batch.texts), batch, errors):
                    answers = [None] * len(batch.texts)
                else:
                    answers = [_results(a) for a in answers]
            except LINE_ERRORS:  # one line's error, or an answer of the wrong type: found line by line
                answers = self._per_line(lambda t: _one(func, t), batch, errors)
        if all(type(a) is list and len(a) == 1 for a in answers):
            return Batch(batch.nums, [a[0] for a in cast("list[list[str]]", answers)], batch.tags)
        nums: list[int] = []
        texts: list[str] = []
        tags: list[tuple[str, ...]] | None = None if batch.tags is None else []
        for i, out in enumerate(answers):
            if out:
                nums += [batch.nums[i]] * len(out)
                texts += out
                if tags is not None:
                    tags += [batch.tags[i]] * len(out)  # type: ignore[index]
        return Batch(nums, texts, tags)

    def _timed(self, ns: int) -> None:
        self.calls[BUCKET_BY_BITS[(ns - 1).bit_length()]] += 1
        self.calls[BUCKETS] += ns

    def _per_line(self, func: Callable[[str], Any], batch: Batch, errors: ErrorList) -> list[list[str] | None]:
        """``func`` on each line, each call timed; a line it fails on is an error of that line.

        The calls are timed back to back (one clock reading per line: a call's time includes
        about 0.1 µs of this loop's own work), which halves what timing costs per line.
        """
        calls, by_bits, clock = self.calls, BUCKET_BY_BITS, time.perf_counter_ns
        answers: list[list[str] | None] = []
        append = answers.append
        doing, offset = self.doing, self.position.offset  # the worker's row: which line it is on, since when
        doing[3] = 1
        timed_out = self.timed_out_lines
        start = t0 = clock()
        for num, text in zip(batch.nums, batch.texts):
            doing[2], doing[4] = num - offset, t0
            if timed_out and num in timed_out:  # it ran this long before its worker was replaced
                errors.append((num, text, TimeoutError(f"timed out after {timed_out[num]:g} s")))
                append(None)
                self._timed(int(timed_out[num] * 1e9))
                t0 = clock()
                continue
            try:
                got = func(text)
                t1 = clock()
                append(_results(got))
            except LINE_ERRORS as exc:
                t1 = clock()
                errors.append((num, text, exc))
                append(None)
            calls[by_bits[(t1 - t0 - 1).bit_length()]] += 1
            t0 = t1
        calls[BUCKETS] += t0 - start
        return answers


def _check_count(answers: Any, lines: int) -> None:
    """A batch function's answer is a list of one answer per line; TypeError saying what it is otherwise."""
    if not isinstance(answers, list):
        raise TypeError(f"batch function returned {type(answers).__name__}, not a list of one answer per line")
    if len(answers) != lines:
        raise TypeError(
            f"batch function returned {len(answers)} result{'s' * (len(answers) != 1)} for {lines} "
            f"line{'s' * (lines != 1)}"
        )


def _wrong_count(answers: Any, lines: int, batch: Batch, errors: ErrorList) -> bool:
    """True, with every line of ``batch`` an error saying so, when a batch function answered the wrong count."""
    try:
        _check_count(answers, lines)
    except TypeError as exc:
        errors.extend((num, text, exc) for num, text in zip(batch.nums, batch.texts))
        return True
    return False


def _one(func: Callable[[list[str]], Any], text: str) -> Any:
    """A batch function called with one line (to find the line it fails on): its one answer."""
    answers = func([text])
    _check_count(answers, 1)
    return answers[0]
