"""A bounded memo for the small pure functions curation calls on every token."""

from __future__ import annotations

from collections.abc import Callable


class Memo(dict):
    """`memo[key]` is `fn(key)`, computed once: a hit is a plain dict lookup (`map(memo.__getitem__,
    keys)` runs in C, at about half the cost of a `functools.lru_cache` hit), a miss calls
    `fn`. Emptied when it reaches `limit` entries, so its memory stays bounded."""

    def __init__(self, fn: Callable, limit: int = 1 << 16):
        super().__init__()
        self.fn, self.limit = fn, limit

    def __missing__(self, key):
        if len(self) >= self.limit:
            self.clear()
        value = self[key] = self.fn(key)
        return value
