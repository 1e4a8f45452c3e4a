"""The ASGI application: the redirect hot path in front of the FastAPI management API.

`create_app()` builds both. Requests for /r/… go straight to `RedirectEndpoint`, a plain ASGI
callable; everything else goes to FastAPI. The lifespan (run by FastAPI) opens the PostgreSQL
pool and the Redis clients, starts the click writer and the link invalidation listener, and closes
them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import FastAPI

from app import metrics
from app.edge import EdgeGuard, GuardRuntime
from app.errors import BACKEND_UNAVAILABLE, install_error_handlers
from app.logs import configure_logging, correlation_id
from app.openapi import complete_openapi
from app.ratelimits import RateLimits
from app.routes import conversions, links, ops, programs, rewards, stats
from app.routes.redirect import RedirectEndpoint
from app.security import IpAnonymizer
from app.services import links as links_service
from app.services.conversions import SecretCache
from app.settings import Settings, load_settings
from app.storage.db import create_pool
from app.storage.event_buffer import EventBuffer
from app.storage.link_cache import LinkCache
from app.storage.redis_client import REDIS_UNAVAILABLE, RedisClient
from app.storage.redis_client import connect as connect_redis
from app.storage.spool import Spool

log = logging.getLogger(__name__)


class ObserveRequests:
    """Metrics, a correlation id and one log line per management API request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = (
            next(
                (v.decode("latin-1")[:64] for k, v in scope["headers"] if k == b"x-request-id"),
                None,
            )
            or uuid.uuid4().hex
        )
        token = correlation_id.set(request_id)
        status = 500

        async def send_observed(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            metrics.http_stats.observe(path, scope["method"], status, elapsed)
            if path not in ("/metrics", "/healthz", "/readyz"):
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": path,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            correlation_id.reset(token)


class TrackingApp:
    """Routes /r/… to the hot path and everything else to the FastAPI app."""

    def __init__(self, api: FastAPI, max_body_bytes: int) -> None:
        self.api = api
        self.redirect: RedirectEndpoint | None = None
        self.guard = EdgeGuard(api, max_body_bytes)
        self._observed = ObserveRequests(self.guard)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        redirect = self.redirect
        if redirect is not None and scope["type"] == "http" and scope["path"].startswith("/r/"):
            await redirect(scope, receive, send)
            return
        await self._observed(scope, receive, send)


def _redis_clients(settings: Settings) -> tuple[RedisClient, RedisClient]:
    timeout = settings.redis_write_timeout_seconds
    redis = connect_redis(
        settings,
        socket_timeout=max(timeout * 4, 1.0),
        socket_connect_timeout=timeout,
        max_connections=64,
    )
    listener = connect_redis(settings, socket_connect_timeout=timeout)
    return redis, listener


async def _relay_link_changes(pool: asyncpg.Pool, redis: RedisClient) -> None:
    """Write through link changes Redis refused at first (app/storage/link_outbox.py)."""
    while True:
        await asyncio.sleep(links_service.RELAY_INTERVAL_SECONDS)
        try:
            await links_service.relay_link_changes(pool, redis)
        except BACKEND_UNAVAILABLE as exc:
            log.warning("link outbox relay: backend unavailable", extra={"error": repr(exc)})


def create_app(settings: Settings | None = None) -> TrackingApp:
    settings = settings or load_settings()
    configure_logging(settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        pool: asyncpg.Pool = await create_pool(
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
        # Lookups that anyone can cause (unknown codes, keys, merchant ids) take at most half the
        # pool, so a flood of them cannot starve /readyz or authenticated work.
        lookups = asyncio.Semaphore(max(1, settings.db_pool_max // 2))
        link_cache = LinkCache(
            redis,
            pool,
            listen_redis=listener,
            click_id_param=settings.click_id_param,
            shards=len(click_buffers),
            ttl=settings.link_cache_ttl_seconds,
            negative_ttl=settings.link_cache_negative_ttl_seconds,
            lookups=lookups,
        )
        conversion_buffer = EventBuffer(
            redis,
            settings.conversion_stream,
            Spool(settings.spool_dir, name="conversions"),
            write_timeout=settings.redis_write_timeout_seconds,
            replay_interval=settings.spool_replay_interval_seconds,
            writers=1,
            behind=click_buffers,  # a conversion is attributed only once its click is stored
        )
        for buffer in click_buffers:
            buffer.start()
        conversion_buffer.start()
        link_cache.start()
        relay = asyncio.create_task(_relay_link_changes(pool, redis), name="link-outbox-relay")
        api.state.settings = settings
        api.state.pool = pool
        api.state.redis = redis
        api.state.event_buffers = [*click_buffers, conversion_buffer]
        api.state.link_cache = link_cache
        api.state.conversion_buffer = conversion_buffer
        rate_limits = RateLimits(settings)
        api.state.webhook_secrets = SecretCache(pool, lookups)
        api.state.anonymize_ip = IpAnonymizer(settings.secret_bytes)
        app.redirect = RedirectEndpoint(link_cache, click_buffers, settings)
        app.guard.runtime = GuardRuntime(pool, rate_limits, lookups, settings.trust_forwarded_for)
        try:
            # Probe Redis once so that the first clicks after a start without Redis go to the
            # spool directly.
            await redis.ping()
        except REDIS_UNAVAILABLE:
            log.error("redis unreachable at start-up: clicks will be spooled")
        log.info("api started")
        try:
            yield
        finally:
            app.redirect = None
            app.guard.runtime = None
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            await link_cache.stop()
            for buffer in api.state.event_buffers:
                await buffer.stop()
            await redis.aclose()
            await listener.aclose()
            await pool.close()
            log.info("api stopped")

    api = FastAPI(
        title="Referral tracking service",
        version="0.1.0",
        description="Tracked referral links, click capture, attribution and rewards.",
        lifespan=lifespan,
    )
    api.openapi = lambda: complete_openapi(api)  # type: ignore[method-assign]
    install_error_handlers(api)
    api.include_router(ops.router)
    api.include_router(programs.router)
    api.include_router(links.router)
    api.include_router(conversions.router)
    api.include_router(stats.router)
    api.include_router(rewards.router)
    app = TrackingApp(api, settings.max_body_bytes)
    return app
