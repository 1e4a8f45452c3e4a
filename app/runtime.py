"""The running service's collaborators, built once by the lifespan: one typed `Runtime`.

`open_runtime(settings)` opens the PostgreSQL pool and the Redis clients, builds the event
buffers (one per click stream shard, and the conversions behind them), the link cache, the
secret cache, the IP anonymiser and the rate limits, starts their background tasks (writers,
spool replay, link invalidation, the link outbox relay), and stops everything in reverse order.
Routes reach each collaborator through an alias in app/routes/deps.py; nothing else reads the
application's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from app.errors import BACKEND_UNAVAILABLE
from app.pipeline.event_buffer import EventBuffer
from app.pipeline.redis_client import REDIS_UNAVAILABLE, RedisClient
from app.pipeline.redis_client import connect as connect_redis
from app.pipeline.spool import Spool
from app.ratelimits import RateLimits
from app.security import IpAnonymizer
from app.services import links as links_service
from app.services.intake import SecretCache
from app.settings import Settings
from app.storage.db import create_pool
from app.storage.link_cache import LinkCache

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    redis: RedisClient
    click_buffers: list[EventBuffer]
    conversion_buffer: EventBuffer
    link_cache: LinkCache
    secrets: SecretCache  # merchants' webhook secrets
    anonymize_ip: IpAnonymizer
    rate_limits: RateLimits
    # PostgreSQL lookups that anyone can cause (unknown codes, keys, merchant ids) take at most
    # half the pool, so a flood of them cannot starve /readyz or authenticated work.
    lookups: asyncio.Semaphore

    @property
    def event_buffers(self) -> list[EventBuffer]:
        return [*self.click_buffers, self.conversion_buffer]


def _redis_clients(settings: Settings) -> tuple[RedisClient, RedisClient]:
    timeout = settings.redis_write_timeout_seconds
    redis = connect_redis(
        settings,
        socket_timeout=max(timeout * 4, 1.0),
        socket_connect_timeout=timeout,
        max_connections=64,
    )
    listener = connect_redis(settings, socket_connect_timeout=timeout)  # waits for messages
    return redis, listener


async def _relay_link_changes(pool: asyncpg.Pool, redis: RedisClient) -> None:
    """Write through link changes Redis refused at first (app/storage/link_outbox.py)."""
    while True:
        await asyncio.sleep(links_service.RELAY_INTERVAL_SECONDS)
        try:
            await links_service.relay_link_changes(pool, redis)
        except BACKEND_UNAVAILABLE as exc:
            log.warning("link outbox relay: backend unavailable", extra={"error": repr(exc)})


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    pool = await create_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    redis, listener = _redis_clients(settings)
    sharded = len(settings.click_streams) > 1
    click_buffers = [
        EventBuffer(
            redis,
            stream,
            Spool(settings.spool_dir, name=f"clicks.shard{i}" if sharded else "clicks"),
            max_batch=settings.click_batch_max,
            write_timeout=settings.redis_write_timeout_seconds,
            replay_interval=settings.spool_replay_interval_seconds,
            writers=settings.click_writers,
        )
        for i, stream in enumerate(settings.click_streams)
    ]
    lookups = asyncio.Semaphore(max(1, settings.db_pool_max // 2))
    runtime = Runtime(
        settings=settings,
        pool=pool,
        redis=redis,
        click_buffers=click_buffers,
        conversion_buffer=EventBuffer(
            redis,
            settings.conversion_stream,
            Spool(settings.spool_dir, name="conversions"),
            write_timeout=settings.redis_write_timeout_seconds,
            replay_interval=settings.spool_replay_interval_seconds,
            writers=1,
            behind=click_buffers,  # a conversion is attributed only once its click is stored
        ),
        link_cache=LinkCache(
            redis,
            pool,
            listen_redis=listener,
            click_id_param=settings.click_id_param,
            shards=len(click_buffers),
            ttl=settings.link_cache_ttl_seconds,
            negative_ttl=settings.link_cache_negative_ttl_seconds,
            lookups=lookups,
        ),
        secrets=SecretCache(pool, settings.keyring, lookups),
        anonymize_ip=IpAnonymizer(settings.keyring.ip_hash_key),
        rate_limits=RateLimits(settings),
        lookups=lookups,
    )
    for buffer in runtime.event_buffers:
        buffer.start()
    runtime.link_cache.start()
    relay = asyncio.create_task(_relay_link_changes(pool, redis), name="link-outbox-relay")
    try:
        # Probe Redis once so that the first clicks after a start without Redis go to the
        # spool directly.
        await redis.ping()
    except REDIS_UNAVAILABLE:
        log.error("redis unreachable at start-up: clicks will be spooled")
    try:
        yield runtime
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        await runtime.link_cache.stop()
        for buffer in runtime.event_buffers:
            await buffer.stop()
        await redis.aclose()
        await listener.aclose()
        await pool.close()
