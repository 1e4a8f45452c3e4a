"""Resolving a link code without touching PostgreSQL on each click.

Three levels: an in-process dict (entries live `ttl` seconds, or until an invalidation message),
then Redis (`link:{code}`, written through by the management API), then PostgreSQL, read only on
a miss in both — for example after Redis lost its data — and written back into Redis.
Unknown codes are cached too, briefly and in a bounded set of their own, and the PostgreSQL reads
misses cause are bounded in number, so a flood of made-up codes can neither exhaust the pool nor
push real links out of the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import zlib
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from app.caches import TtlCache
from app.pipeline import keys
from app.pipeline.redis_client import REDIS_UNAVAILABLE, RedisClient
from app.storage import links as links_repo
from app.storage.rows import RedirectRecord

log = logging.getLogger(__name__)

INVALIDATION_CHANNEL = keys.LINK_INVALIDATION_CHANNEL
# Redis holds the links in use, not every link ever made: a miss costs one PostgreSQL read and
# writes the record back.
LINK_RECORD_TTL_SECONDS = keys.LINK_RECORD_TTL_SECONDS
_redis_key = keys.link_record


class NotCached(enum.Enum):
    """What `LinkCache.get` answers for a code it holds nothing about (neither a target nor
    "unknown"): one identity to compare with, on the hot path."""

    NOT_CACHED = enum.auto()


NOT_CACHED = NotCached.NOT_CACHED


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """Everything the redirect needs, precomputed so a click only concatenates strings."""

    link_id: str
    location_head: str  # the destination up to where "rcid=<id>" goes, ending in "?" or "&"
    fragment: str  # "#…" of the destination, or ""
    max_age: int  # cookie lifetime: the program's attribution window, in seconds
    active: bool
    shard: int  # which click stream this link's clicks go to


def shard_of(code: str, shards: int) -> int:
    """A stable hash (not Python's, which changes per process) of the code, modulo shards."""
    return zlib.crc32(code.encode()) % shards if shards > 1 else 0


def build_target(record: RedirectRecord, click_id_param: str, shard: int = 0) -> LinkTarget:
    destination: str = record["destination"]
    base, hash_mark, fragment = destination.partition("#")
    separator = "" if base.endswith(("?", "&")) else ("&" if "?" in base else "?")
    return LinkTarget(
        link_id=record["id"],
        location_head=f"{base}{separator}{click_id_param}=",
        fragment=hash_mark + fragment,
        max_age=int(record["window_days"]) * 86_400,
        active=bool(record["active"]),
        shard=shard,
    )


async def publish_link(redis: RedisClient, code: str, record: RedirectRecord) -> None:
    """Write a link's record through to Redis and tell every API process to drop its copy.

    Two commands, not one transaction: a cluster refuses PUBLISH inside a pipeline. Should the
    PUBLISH be lost, the other processes' copies still expire within the cache's `ttl`."""
    await redis.set(_redis_key(code), orjson.dumps(record), ex=LINK_RECORD_TTL_SECONDS)
    await redis.publish(INVALIDATION_CHANNEL, code)


class LinkCache:
    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        *,
        listen_redis: RedisClient,
        click_id_param: str,
        shards: int = 1,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_entries: int = 200_000,
        max_unknown: int = 50_000,
        lookups: asyncio.Semaphore | None = None,
    ) -> None:
        self._redis = redis
        self._listen_redis = listen_redis  # no read timeout: it waits for messages indefinitely
        self._pool = pool
        self._param = click_id_param
        self._shards = shards
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, LinkTarget | None]] = {}
        # Unknown codes apart, and bounded on their own: a flood of made-up codes can neither
        # grow memory nor push the real links out of the cache.
        self._unknown: TtlCache[str, bool] = TtlCache(max_unknown, negative_ttl)
        # Bounds the PostgreSQL reads that made-up codes can cause.
        self._lookups: AbstractAsyncContextManager[Any] = lookups or contextlib.nullcontext()
        self._listener: asyncio.Task[None] | None = None

    def get(self, code: str) -> LinkTarget | NotCached | None:
        """The cached target, None for a cached unknown code, NOT_CACHED when it is not cached
        (then call `load`)."""
        hit = self._entries.get(code)
        if hit is None:
            return None if code in self._unknown else NOT_CACHED
        if hit[0] < time.monotonic():
            return NOT_CACHED
        return hit[1]

    async def load(self, code: str) -> LinkTarget | None:
        record: RedirectRecord | None = None
        redis_ok = True
        try:
            raw = await self._redis.get(_redis_key(code))
            if raw is not None:
                record = orjson.loads(raw)
        except REDIS_UNAVAILABLE:
            redis_ok = False
        if record is None:
            async with self._lookups:
                record = await links_repo.redirect_record(self._pool, code)
            if record is not None and redis_ok:
                # NX: a record read from PostgreSQL just before a change committed must not
                # overwrite the change's own, newer write-through.
                with contextlib.suppress(*REDIS_UNAVAILABLE):
                    await self._redis.set(
                        _redis_key(code), orjson.dumps(record), ex=LINK_RECORD_TTL_SECONDS, nx=True
                    )
        target = build_target(record, self._param, shard_of(code, self._shards)) if record else None
        self._remember(code, target)
        return target

    def _remember(self, code: str, target: LinkTarget | None) -> None:
        if target is None:
            self._unknown.put(code, True)
            self._entries.pop(code, None)
            return
        self._unknown.discard(code)
        if len(self._entries) >= self._max_entries:
            # Oldest insertion first: dicts keep insertion order.
            for stale in list(self._entries)[: self._max_entries // 10]:
                del self._entries[stale]
        self._entries[code] = (time.monotonic() + self._ttl, target)

    def forget(self, code: str) -> None:
        self._entries.pop(code, None)
        self._unknown.discard(code)

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="link-invalidation")

    async def stop(self) -> None:
        if self._listener:
            self._listener.cancel()
            # Bounded: closing a cancelled pub/sub connection has been seen to stall in redis-py
            # (redis/redis-py#3941), and a shutdown must not wait on the invalidation channel.
            done, _ = await asyncio.wait({self._listener}, timeout=5.0)
            if not done:
                log.warning("link invalidation listener did not stop within 5 s")

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_redis.initialize()  # a cluster client must know its slots
                async with self._listen_redis.pubsub() as pubsub:
                    await pubsub.subscribe(INVALIDATION_CHANNEL)
                    # Anything published while we were not subscribed may be missed: drop all.
                    self._entries.clear()
                    self._unknown.clear()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            data = message["data"]
                            self.forget(data.decode() if isinstance(data, bytes) else data)
            except REDIS_UNAVAILABLE:
                await asyncio.sleep(1.0)
