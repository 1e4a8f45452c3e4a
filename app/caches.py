"""A bounded in-process cache whose entries expire: one mechanism for every cache that input
from anyone can fill (unknown API keys, unknown link codes, merchants' webhook secrets and
unknown merchant ids). Bounded, so a flood of made-up values cannot grow memory: the entry
written longest ago goes first."""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Missing(enum.Enum):
    """What `TtlCache.get` answers for a key it holds nothing (live) about."""

    MISSING = enum.auto()


MISSING = Missing.MISSING


class TtlCache(Generic[K, V]):
    def __init__(self, max_entries: int, ttl: float) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | Missing:
        hit = self._entries.get(key)
        if hit is None:
            return MISSING
        if hit[0] < time.monotonic():
            del self._entries[key]
            return MISSING
        return hit[1]

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not MISSING

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (time.monotonic() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
