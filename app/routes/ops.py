"""For operators: /healthz (alive), /readyz (dependencies reachable), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import metrics
from app.pipeline.flusher import entry_ms
from app.pipeline.redis_client import REDIS_UNAVAILABLE
from app.routes.deps import AppRuntime, CurrentMerchant
from app.runtime import Runtime
from app.schemas import MerchantInfo

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(awaitable: Any, limit_seconds: float = 1.0) -> str:
    try:
        async with asyncio.timeout(limit_seconds):
            await awaitable
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


@router.get("/readyz")
async def readyz(runtime: AppRuntime) -> JSONResponse:
    """503 when PostgreSQL is unreachable; 200 "degraded" while Redis is.

    Without Redis the redirect keeps answering (clicks go to the fsync'd local spool and are
    replayed later), so the instance must stay in the load balancer's rotation: a shopper is never
    stuck on our page. The body and `referral_degraded` tell operators what is going on.
    """
    postgres = await _check(runtime.pool.fetchval("SELECT 1"))
    redis = await _check(runtime.redis.ping())
    buffers = runtime.event_buffers
    degraded = redis != "ok" or not all(b.redis_ok for b in buffers)
    status = "unavailable" if postgres != "ok" else ("degraded" if degraded else "ok")
    body = {
        "status": status,
        "postgres": postgres,
        "redis": redis,
        "spool_files": sum(len(b.spool_files()) for b in buffers),
    }
    return JSONResponse(body, status_code=503 if status == "unavailable" else 200)


async def _refresh_stream_gauges(runtime: Runtime) -> None:
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


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(runtime: AppRuntime) -> Response:
    await _refresh_stream_gauges(runtime)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/me", response_model=MerchantInfo, tags=["merchant"])
async def me(merchant: CurrentMerchant) -> MerchantInfo:
    return MerchantInfo(id=merchant.id, name=merchant.name)
