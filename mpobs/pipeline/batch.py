"""A batch of lines moving through the DAG: parallel lists, no per-line objects."""

from __future__ import annotations

NO_TAGS: tuple[str, ...] = ()


class Batch:
    """Lines of one batch, in input order.

    ``nums[i]`` is the 1-based input line number of item ``i`` (its identity; a
    processor that emits several lines for one input line repeats the number),
    ``texts[i]`` its current text and ``tags[i]`` a tuple of tags, or ``tags`` is
    None while no processor has tagged anything. ``nums`` is never decreasing.
    """

    __slots__ = ("nums", "tags", "texts")

    def __init__(self, nums: list[int], texts: list[str], tags: list[tuple[str, ...]] | None = None) -> None:
        self.nums = nums
        self.texts = texts
        self.tags = tags

    def __repr__(self) -> str:
        return f"Batch({self.nums!r}, {self.texts!r}, {self.tags!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Batch):
            return NotImplemented
        return (self.nums, self.texts, self.tags) == (other.nums, other.texts, other.tags)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: list[int]) -> Batch:
        """The items at positions ``idx`` (ascending), as a new batch."""
        tags = self.tags
        # map over __getitem__ runs the loop in C: about twice a comprehension's speed.
        return Batch(
            list(map(self.nums.__getitem__, idx)),
            list(map(self.texts.__getitem__, idx)),
            None if tags is None else list(map(tags.__getitem__, idx)),
        )

    def tags_or_empty(self) -> list[tuple[str, ...]]:
        return [NO_TAGS] * len(self.texts) if self.tags is None else self.tags


EMPTY = Batch([], [], None)


def merge(batches: list[Batch]) -> Batch:
    """Merge batches by line number; equal numbers keep the order of ``batches``.

    Used for fan-in and for the sinks' output: the result is in input-line order.
    """
    nonempty = [b for b in batches if b.texts]
    if not nonempty:
        return Batch([], [], None)
    if len(nonempty) == 1:
        return nonempty[0]
    nums: list[int] = []
    texts: list[str] = []
    any_tags = any(b.tags is not None for b in nonempty)
    tags: list[tuple[str, ...]] = []
    for b in nonempty:
        nums += b.nums
        texts += b.texts
        if any_tags:
            tags += b.tags_or_empty()
    # sorted() is stable and finds the already sorted runs, so this is ~linear.
    order = sorted(range(len(nums)), key=nums.__getitem__)
    return Batch(
        list(map(nums.__getitem__, order)),
        list(map(texts.__getitem__, order)),
        list(map(tags.__getitem__, order)) if any_tags else None,
    )
