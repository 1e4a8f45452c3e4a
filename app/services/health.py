"""Health for operators: readiness (are PostgreSQL and Redis reachable?) and the gauges
/metrics refreshes when it is scraped (from Redis: stream lengths, pending entries, the oldest
unflushed event, Redis memory; from PostgreSQL: the webhook backlog)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from app import metrics
from app.errors import BACKEND_UNAVAILABLE
from app.pipeline.flusher import entry_ms
from app.pipeline.redis_client import REDIS_UNAVAILABLE
from app.storage import webhooks as webhooks_repo

if TYPE_CHECKING:
    from app.runtime import Runtime


async def _check(awaitable: Awaitable[Any], limit_seconds: float = 1.0) -> str:
    try:
        async with asyncio.timeout(limit_seconds):
            await awaitable
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


async def readiness(runtime: Runtime) -> dict[str, Any]:
    """Whether this instance can serve: PostgreSQL must answer; without Redis it is degraded
    (clicks are spooled) but stays in rotation."""
    postgres = await _check(runtime.pool.fetchval("SELECT 1"))
    redis = await _check(runtime.redis.ping())
    buffers = runtime.event_buffers
    degraded = redis != "ok" or not all(b.redis_ok for b in buffers)
    status = "unavailable" if postgres != "ok" else ("degraded" if degraded else "ok")
    return {
        "status": status,
        "postgres": postgres,
        "redis": redis,
        "spool_files": sum(len(b.spool_files()) for b in buffers),
    }


async def refresh_gauges(runtime: Runtime) -> None:
    """The stream and Redis-memory gauges, read from Redis when /metrics is scraped, and the
    webhook backlog, from PostgreSQL."""
    await _webhook_gauges(runtime)
    await _stream_gauges(runtime)


async def _webhook_gauges(runtime: Runtime) -> None:
    try:
        async with asyncio.timeout(0.5):
            backlog = await webhooks_repo.backlog(runtime.pool)
    except (TimeoutError, *BACKEND_UNAVAILABLE):  # type: ignore[misc]
        metrics.errors.labels("metrics_postgres").inc()
        return
    metrics.webhook_pending.set(backlog["pending"])
    metrics.webhook_oldest_pending.set(float(backlog["oldest"]))
    metrics.webhook_given_up.set(backlog["failed"])
    metrics.webhook_disabled_endpoints.set(backlog["disabled"])


async def _stream_gauges(runtime: Runtime) -> None:
    streams = runtime.settings.event_streams
    try:
        async with asyncio.timeout(0.5), runtime.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xlen(stream)
                pipe.xrange(stream, count=1)
                pipe.xpending(stream, runtime.settings.flusher_group)
            replies = await pipe.execute(raise_on_error=False)
    except REDIS_UNAVAILABLE:
        metrics.errors.labels("metrics_redis").inc()
        return
    try:
        async with asyncio.timeout(0.5):
            memory = await runtime.redis.info("memory")
    except REDIS_UNAVAILABLE:
        memory = {}
    # A cluster client answers per node: the gauges then show the node that uses the most.
    nodes = [v for v in memory.values() if isinstance(v, dict)] or [memory]
    used = [n for n in nodes if "used_memory" in n]
    if used:
        fullest = max(used, key=lambda n: int(n["used_memory"]))
        metrics.redis_used_memory.set(int(fullest["used_memory"]))
        metrics.redis_max_memory.set(int(fullest.get("maxmemory", 0)))
    for n, stream in enumerate(streams):
        length, first, pending = replies[3 * n : 3 * n + 3]
        if isinstance(length, int):
            metrics.stream_length.labels(stream).set(length)
        # Before the first flusher starts there is no group (an error reply): nothing pending.
        pending_count = pending.get("pending", 0) if isinstance(pending, dict) else 0
        metrics.stream_pending.labels(stream).set(pending_count)
        age = 0.0
        if isinstance(first, list) and first:
            age = max(time.time() - entry_ms(first[0][0]) / 1000, 0.0)
        metrics.oldest_unflushed_age.labels(stream).set(age)
