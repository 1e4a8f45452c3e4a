"""Bytes of Redis per click, per conversion and per link, measured (docs/scaling.md quotes it).

Writes real payloads the way the service does (clicks as group-committed stream entries of 1 and
of 32 clicks, conversions as stream entries plus their two idempotency keys, link records) into a
scratch database of the Redis in REDIS_URL, and reads INFO memory before and after.
Usage: REDIS_URL=redis://… python loadtests/redis_memory.py
"""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime

import orjson
from redis.asyncio import Redis

from app.pipeline.events import EVENTS_FIELD, new_click_and_visitor_ids
from app.pipeline.keys import CONVERSION_TTL_SECONDS, conversion_digest, conversion_queued
from app.storage.link_cache import LINK_RECORD_TTL_SECONDS

N = 20_000
STREAM, TTL = "conversions", CONVERSION_TTL_SECONDS
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Version/17.4"


def _click() -> bytes:
    click_id, visitor = new_click_and_visitor_ids()
    return orjson.dumps((click_id, str(uuid.uuid4()), visitor, os.urandom(16).hex(),
                         "203.0.113.0/24", UA, "https://wa.me/", None, "G"))  # fmt: skip


def _conversion() -> bytes:
    now = datetime.now(UTC).isoformat()
    return orjson.dumps({
        "id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4()), "event_id": "order-100234",
        "type": "purchase", "occurred_at": now, "received_at": now, "order_id": "100234",
        "refund_of": None, "customer_id": "cust-88231", "customer_email_hash": os.urandom(32).hex(),
        "amount_minor": 12000, "currency": "EUR", "click_id": uuid.uuid4().hex,
        "referral_code": None, "ip_hash": os.urandom(16).hex(), "ip_prefix": "203.0.113.0/24",
        "user_agent": UA,
    })  # fmt: skip


async def _used(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def _measure(redis: Redis, fill: object) -> float:
    await redis.flushdb()
    before = await _used(redis)
    await fill  # type: ignore[misc]
    return (await _used(redis) - before) / N


async def main() -> None:
    redis = Redis.from_url(os.environ["REDIS_URL"], db=15)

    async def clicks(per_entry: int) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(N // per_entry):
                payload = b"[" + b",".join(_click() for _ in range(per_entry)) + b"]"
                pipe.xadd("clicks", {EVENTS_FIELD: payload})
            await pipe.execute()

    async def conversions() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(N):
                conversion = uuid.uuid4()
                pipe.xadd("conversions", {EVENTS_FIELD: b"[" + _conversion() + b"]"})
                pipe.set(
                    conversion_digest("conversions", conversion),
                    "0" * 32,
                    ex=CONVERSION_TTL_SECONDS,
                )
                pipe.set(
                    conversion_queued("conversions", conversion),
                    str(uuid.uuid4()),
                    ex=CONVERSION_TTL_SECONDS,
                )
            await pipe.execute()

    async def digests() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(N):
                pipe.set(
                    conversion_digest("conversions", uuid.uuid4()),
                    "0" * 32,
                    ex=CONVERSION_TTL_SECONDS,
                )
            await pipe.execute()

    async def links() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for n in range(N):
                record = {"id": str(uuid.uuid4()), "destination": "https://shop.example.com/welcome",
                          "active": True, "window_days": 30}  # fmt: skip
                pipe.set(f"link:{n:08x}", orjson.dumps(record), ex=LINK_RECORD_TTL_SECONDS)
            await pipe.execute()

    rows = [
        ("click, one per stream entry (low traffic)", await _measure(redis, clicks(1))),
        ("click, 32 per stream entry (under load)", await _measure(redis, clicks(32))),
        ("conversion, queued (stream entry + 2 keys)", await _measure(redis, conversions())),
        ("conversion, processed (its digest, for a day)", await _measure(redis, digests())),
        ("link record (7 days after its last use)", await _measure(redis, links())),
    ]
    await redis.flushdb()
    await redis.aclose()
    print("| what | bytes each | in 1 GB |")
    print("|---|---:|---:|")
    for name, size in rows:
        print(f"| {name} | {size:,.0f} | {int(2**30 / size):,} |")


if __name__ == "__main__":
    asyncio.run(main())
