"""The flusher process: one Flusher per event stream, until SIGTERM (or drained, with --burst)."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import start_http_server

from app.pipeline.flusher import Flusher, Sink
from app.pipeline.redis_client import RedisClient
from app.pipeline.redis_client import connect as connect_redis
from app.services.clicks import ClickSink
from app.services.conversion_sink import ConversionSink
from app.settings import Settings

log = logging.getLogger(__name__)


def sinks(settings: Settings, redis: RedisClient) -> list[Sink]:
    """One sink per click stream shard, and the conversions."""
    out = []
    for stream in settings.click_streams:
        click_sink = ClickSink()
        out.append(
            Sink(
                stream=stream,
                prepare=click_sink.prepare,
                store=click_sink.store,
                maintain=click_sink.maintain,
                before_ack=click_sink.before_ack,
            )
        )
    conversion_sink = ConversionSink(
        redis, settings.click_streams, stream=settings.conversion_stream,
        dsn=settings.database_url, workers=settings.conversion_workers,
    )  # fmt: skip
    out.append(
        Sink(
            stream=settings.conversion_stream,
            prepare=conversion_sink.prepare,
            store=conversion_sink.store,
            before_ack=conversion_sink.before_ack,
        )
    )
    return out


def build_flushers(settings: Settings, redis: RedisClient) -> list[Flusher]:
    return [
        Flusher(
            redis,
            settings.database_url,
            sink,
            group=settings.flusher_group,
            batch_size=settings.flush_batch_size,
            max_wait_ms=settings.flush_max_wait_ms,
            claim_idle_ms=settings.flush_claim_idle_ms,
        )
        for sink in sinks(settings, redis)
    ]


async def run(settings: Settings, *, burst: bool = False) -> None:
    # The blocking read waits up to flush_max_wait_ms, so the socket timeout must be longer.
    redis = connect_redis(
        settings,
        socket_timeout=settings.flush_max_wait_ms / 1000 + 10,
        socket_connect_timeout=2,
    )
    stop = asyncio.Event()
    if not burst:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if settings.flusher_metrics_port:
            try:
                start_http_server(settings.flusher_metrics_port, addr="127.0.0.1")
            except OSError as exc:
                log.warning("flusher metrics port busy", extra={"error": repr(exc)})
    flushers = build_flushers(settings, redis)
    log.info("flusher started", extra={"consumers": [f.consumer for f in flushers]})
    try:
        await asyncio.gather(*(f.run(burst=burst, stop=stop) for f in flushers))
    finally:
        await redis.aclose()
        log.info("flusher stopped")
