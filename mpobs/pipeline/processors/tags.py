"""Processors that classify lines: tag_extractor (adds tags) and counter (counts per key)."""

from __future__ import annotations

import re
from collections import Counter

from mpobs.pipeline.batch import NO_TAGS, Batch
from mpobs.pipeline.processors.base import ErrorList, Processor, Spec, json_type, register

DEFAULT_TAG_REGEX = r"\b(ERROR|WARN|WARNING|INFO|DEBUG)\b"
# The same matches as DEFAULT_TAG_REGEX, written so that `re` can skip ahead: a
# leading \b makes the engine try every position, a leading literal lets it jump
# to the next E, W, I or D. "(?<!\wE)" right after the E is the \b before it.
FAST_TAG_REGEX = r"(E(?<!\wE)RROR|W(?<!\wW)ARN|W(?<!\wW)ARNING|I(?<!\wI)NFO|D(?<!\wD)EBUG)\b"
_LEVEL_TAGS = {"ERROR": ("error",), "WARN": ("warn",), "WARNING": ("warn",), "INFO": ("info",), "DEBUG": ("debug",)}


def add_tags(old: list[tuple[str, ...]] | None, new: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Each line's old tags followed by its new ones, without repeats."""
    if old is None:
        return new
    return [o + tuple(t for t in n if t not in o) if n else o for o, n in zip(old, new)]


def count_tags(new: list[tuple[str, ...]], into: Counter[str]) -> None:
    for tags, n in Counter(new).items():
        for tag in tags:
            into[tag] += n


@register("tag_extractor")
class TagExtractor(Processor):
    """Adds tags without changing the text.

    Default: the first match of ``\\b(ERROR|WARN|WARNING|INFO|DEBUG)\\b`` gives
    error, warn, info or debug. Custom: ``rules`` {tag: regex}, first match wins,
    or every match with ``multi``.
    """

    keys = frozenset({"rules", "multi", "ignore_case"})

    def __init__(self, pid: str, spec: Spec) -> None:
        super().__init__(pid, spec)
        self.multi = spec.get("multi", bool, False)
        flags = re.IGNORECASE if spec.get("ignore_case", bool, False) else 0
        rules = spec.get("rules", dict, None)
        self.ignore_case = bool(flags)
        if rules is None:
            self.level_rx: re.Pattern[str] | None = re.compile(FAST_TAG_REGEX, flags)
            self.rules: list[tuple[tuple[str, ...], re.Pattern[str]]] = []
            self.tags_added = ("error", "warn", "info", "debug")
        else:
            if not rules:
                raise spec.error("rules must name at least one tag")
            self.level_rx = None
            for tag, rx in rules.items():
                if not isinstance(rx, str):
                    raise spec.error(f"rules.{tag} must be a string (a regex), got {json_type(rx)}")
                if not tag:
                    raise spec.error("rules has an empty tag name")
            self.rules = [((tag,), spec.regex(f"rules.{tag}", rx, flags)) for tag, rx in rules.items()]
            self.tags_added = tuple(rules)

    def process(self, batch: Batch, errors: ErrorList) -> Batch:
        texts = batch.texts
        if self.level_rx is not None:
            search = self.level_rx.search
            level = _LEVEL_TAGS
            if self.multi:
                findall = self.level_rx.findall
                new = [tuple(dict.fromkeys(level[w.upper()][0] for w in findall(t))) for t in texts]
            elif self.ignore_case:
                new = [level[m[1].upper()] if (m := search(t)) else NO_TAGS for t in texts]
            else:
                new = [level[m[1]] if (m := search(t)) else NO_TAGS for t in texts]
        elif self.multi:
            rules = self.rules
            new = [sum((tag for tag, rx in rules if rx.search(t)), NO_TAGS) for t in texts]
        else:
            new = [self._first_rule(t) for t in texts]
        count_tags(new, self.key_counts)
        return Batch(batch.nums, texts, add_tags(batch.tags, new))

    def _first_rule(self, text: str) -> tuple[str, ...]:
        for tag, rx in self.rules:
            if rx.search(text):
                return tag
        return NO_TAGS


@register("counter")
class KeyCounter(Processor):
    """Counts lines per key (``by``: "tag", or a regex with one group) and passes every line on."""

    keys = frozenset({"by"})
    counts_keys = True

    def __init__(self, pid: str, spec: Spec) -> None:
        super().__init__(pid, spec)
        by = spec.get("by", str, "tag")
        if by == "tag":
            self.rx: re.Pattern[str] | None = None
        else:
            self.rx = spec.regex("by", by)
            if self.rx.groups != 1:
                raise spec.error(f'by must be "tag" or a regex with exactly one group, {by!r} has {self.rx.groups}')

    def process(self, batch: Batch, errors: ErrorList) -> Batch:
        if self.rx is None:
            if batch.tags is not None:
                count_tags(batch.tags, self.key_counts)
        else:
            search = self.rx.search
            self.key_counts.update(m[1] for t in batch.texts if (m := search(t)) and m[1] is not None)
        return batch
