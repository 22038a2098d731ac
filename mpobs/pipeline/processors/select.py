"""Processors that choose lines: filter (by regex or tag) and router (to named routes)."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import compress
from typing import Any

from mpobs.pipeline.batch import Batch
from mpobs.pipeline.processors.base import ErrorList, Processor, Spec, json_type, register

#: Picks the positions of the lines a condition holds for.
Selector = Callable[[Batch, list[int]], list[int]]


def _regex_selector(rx: re.Pattern[str]) -> Selector:
    search = rx.search

    def select(batch: Batch, among: list[int]) -> list[int]:
        texts = batch.texts
        return [i for i in among if search(texts[i])]

    return select


def _tag_selector(tag: str) -> Selector:
    def select(batch: Batch, among: list[int]) -> list[int]:
        if batch.tags is None:
            return []
        tags = batch.tags
        return [i for i in among if tag in tags[i]]

    return select


@register("filter")
class Filter(Processor):
    """Keeps a line when ``pattern`` matches (re.search) or, with ``tag``, when it has the tag."""

    keys = frozenset({"pattern", "tag", "ignore_case", "invert"})

    def __init__(self, pid: str, spec: Spec) -> None:
        super().__init__(pid, spec)
        self.invert = spec.get("invert", bool, False)
        ignore_case = spec.get("ignore_case", bool, False)
        has_pattern, has_tag = "pattern" in spec.raw, "tag" in spec.raw
        if has_pattern == has_tag:
            raise spec.error("give exactly one of 'pattern' (a regex) or 'tag'")
        self.tag: str | None = spec.get("tag", str) if has_tag else None
        self.rx = spec.regex("pattern", flags=re.IGNORECASE if ignore_case else 0) if has_pattern else None

    def process(self, batch: Batch, errors: ErrorList) -> Batch:
        texts = batch.texts
        if self.rx is not None:
            search = self.rx.search
            if self.invert:
                idx = [i for i, t in enumerate(texts) if not search(t)]
            else:
                idx = [i for i, t in enumerate(texts) if search(t)]
        else:
            tags = batch.tags_or_empty()
            # Lines share a few tag tuples: decide once per distinct tuple, then
            # select in C with compress().
            keep = {tg: (self.tag in tg) != self.invert for tg in set(tags)}
            idx = list(compress(range(len(tags)), map(keep.__getitem__, tags)))
        if len(idx) == len(texts):
            return batch
        return batch.take(idx)


@register("router")
class Router(Processor):
    """Sends each line to the first route whose regex or tag matches, else to ``default``."""

    keys = frozenset({"routes", "default", "ignore_case"})

    def __init__(self, pid: str, spec: Spec) -> None:
        super().__init__(pid, spec)
        routes = spec.get("routes", dict)
        if not routes:
            raise spec.error("routes must name at least one route")
        flags = re.IGNORECASE if spec.get("ignore_case", bool, False) else 0
        self.selectors: list[tuple[str, Selector]] = []
        for name, cond in routes.items():
            self.selectors.append((name, self._selector(spec, name, cond, flags)))
        self.default: str | None = spec.get("default", str, None)
        names = list(routes)
        if self.default is not None and self.default not in names:
            names.append(self.default)
        for name in names:
            if not name or "." in name:
                raise spec.error(f"route name {name!r} must be non-empty and without '.'")
        self.routes = tuple(names)

    @staticmethod
    def _selector(spec: Spec, name: str, cond: Any, flags: int) -> Selector:
        if isinstance(cond, str):
            return _regex_selector(spec.regex(f"routes.{name}", cond, flags))
        if isinstance(cond, dict) and set(cond) == {"tag"} and isinstance(cond["tag"], str):
            return _tag_selector(cond["tag"])
        msg = f'routes.{name} must be a regex string or {{"tag": "<tag>"}}, got {json_type(cond)}'
        raise spec.error(msg)

    def process(self, batch: Batch, errors: ErrorList) -> dict[str, Batch]:
        remaining = list(range(len(batch)))
        routed: dict[str, list[int]] = {}
        for name, select in self.selectors:
            if not remaining:
                break
            hit = select(batch, remaining)
            if hit:
                routed.setdefault(name, []).extend(hit)
                hit_set = set(hit)
                remaining = [i for i in remaining if i not in hit_set]
        if self.default is not None and remaining:
            routed.setdefault(self.default, []).extend(remaining)
        # A default that is also a named route got two ascending runs: restore order.
        return {name: batch.take(sorted(idx)) for name, idx in routed.items()}
