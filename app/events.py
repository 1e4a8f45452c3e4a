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


def new_click_and_visitor_ids() -> tuple[str, str]:
    """A click id and a fresh visitor id, from one call to the OS's random source (hot path).

    The click id is 32 hex digits: 48 bits of Unix milliseconds, then 80 random bits —
    time-ordered (good for the index) and unguessable (a click id in a URL must not be forgeable).
    The timestamp inside is the click's time, so a retried delivery maps to the same row.
    """
    random = os.urandom(26).hex()
    return f"{time.time_ns() // 1_000_000:012x}{random[:20]}", random[20:]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def click_time(click_id: str) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(click_id[:12], 16))


def is_click_id(value: str) -> bool:
    if len(value) != 32:
        return False
    try:
        int(value, 16)
    except ValueError:
        return False
    return True
