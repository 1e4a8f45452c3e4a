"""Unique visitors of a program: a HyperLogLog per program in Redis (PFADD, PFCOUNT).

Distinct counts do not add up, so they cannot live in the daily click counts; counting distinct
visitors over a program's raw clicks takes seconds at 10 million clicks. A HyperLogLog answers in
a millisecond within about 1 % (Redis: 0.81 % standard error, exact for small counts), and takes
at most 12 KB per program. The flusher adds each batch's human visitors after committing it, in
the same pipeline as the acknowledgement; adding a visitor twice changes nothing, so a
re-delivered batch is harmless. Should Redis lose the keys, `referral rebuild-visitor-counts`
recomputes them from the clicks in PostgreSQL.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from app.pipeline import keys
from app.pipeline.redis_client import REDIS_UNAVAILABLE, RedisClient

VisitorsByProgram = dict[UUID, list[str]]  # program → visitor ids (32 hex digits)


_key = keys.program_visitors


def add_visitors(pipe: Any, visitors: VisitorsByProgram) -> None:
    """Queue the PFADDs on a Redis pipeline."""
    for program_id, ids in visitors.items():
        pipe.pfadd(_key(program_id), *ids)


async def count_visitors(redis: RedisClient, program_id: UUID) -> int | None:
    """The program's unique visitors (estimated), or None while Redis is unreachable."""
    try:
        count: int = await redis.pfcount(_key(program_id))
    except REDIS_UNAVAILABLE:
        return None
    return count
