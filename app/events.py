"""The click event: what the redirect writes to Redis and the flusher writes to PostgreSQL.

A click travels as a compact JSON array (field order below), many clicks per Redis stream entry,
so that the hot path pays for one Redis round trip per batch of concurrent requests.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

# Field positions inside one encoded click.
CLICK_ID, LINK_ID, VISITOR_ID, IP_HASH, IP_PREFIX, USER_AGENT, REFERER, PURPOSE, METHOD = range(9)
EVENTS_FIELD = b"e"


class _Entropy:
    """Random hex digits from the OS's CSPRNG, drawn 6.5 KB at a time.

    One getrandom() call per 128 clicks instead of one per click: a system call costs more than
    the rest of making the ids. Refilled in a forked child, so two processes never share digits.
    """

    __slots__ = ("digits", "used")
    DRAW = 128 * 26  # bytes: 20 + 32 hex digits per click

    def __init__(self) -> None:
        self.reset()

    def take52(self) -> str:
        used = self.used
        if used >= len(self.digits):
            self.digits = os.urandom(self.DRAW).hex()
            used = 0
        self.used = used + 52
        return self.digits[used : used + 52]

    def reset(self) -> None:
        self.digits = ""
        self.used = 0


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.reset)


def new_click_and_visitor_ids() -> tuple[str, str]:
    """A click id and a fresh visitor id (hot path).

    The click id is 32 hex digits: 48 bits of Unix milliseconds, then 80 random bits —
    time-ordered (good for the index) and unguessable (a click id in a URL must not be forgeable).
    The timestamp inside is the click's time, so a retried delivery maps to the same row.
    The visitor id is 128 random bits.
    """
    random = _entropy.take52()
    return (time.time_ns() // 1_000_000).to_bytes(6).hex() + random[:20], random[20:]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def click_time(click_id: str) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(click_id[:12], 16))


_HEX_DIGITS = "0123456789abcdefABCDEF"


def parse_click_id(value: str, now: datetime, earliest: datetime, skew: timedelta) -> str:
    """A click id as the shop passed it back (dashes and case tolerated), as 32 lower-case hex
    digits, or ValueError: not our shape, or a time inside it that no click of ours can have
    (before `earliest`, or beyond `now + skew`), which PostgreSQL could not store either."""
    compact = value.replace("-", "").lower()
    if not is_click_id(compact):
        raise ValueError("must be the 32 hex digit click id from the rcid parameter")
    millis = int(compact[:12], 16)
    if not earliest.timestamp() * 1000 <= millis <= (now + skew).timestamp() * 1000:
        raise ValueError("is not a click id of ours: the time inside it is out of range")
    return compact


def is_click_id(value: str) -> bool:
    """32 hex digits, the shape of our click and visitor ids; nothing else (int(…, 16) would also
    take a sign, underscores, spaces and a 0x prefix)."""
    return len(value) == 32 and not value.strip(_HEX_DIGITS)
