"""The flusher: moves events from a Redis stream into PostgreSQL in batches, at least once.

Per batch: read entries through the consumer group (new ones, plus entries a dead flusher left
pending), write them in one PostgreSQL transaction that skips what is already stored, and only
after the commit acknowledge and delete them in Redis. A crash anywhere before the acknowledgement
means the entries are delivered again — to this flusher's successor or to another flusher after
`claim_idle_ms` — and PostgreSQL's primary key turns the second delivery into a no-op.
Several flushers may run at once: the consumer group hands each entry to one of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.exceptions import ResponseError

from app import metrics
from app.pipeline.events import EVENTS_FIELD
from app.pipeline.redis_client import REDIS_UNAVAILABLE, RedisClient
from app.storage import dead_letters
from app.storage.db import is_transient

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """Raised by a sink whose batch cannot be stored yet; the flusher retries it."""


# Failure injection for the chaos tests: "kill-after-commit" makes the process SIGKILL itself
# between the PostgreSQL commit and the Redis acknowledgement — the worst moment to die.
FAILPOINT_ENV = "FLUSHER_FAILPOINT"


@dataclass(frozen=True, slots=True)
class Sink:
    """Where one stream's events go."""

    stream: str
    prepare: Callable[[asyncpg.Connection], Awaitable[None]]
    store: Callable[[asyncpg.Connection, Batch], Awaitable[int]]
    maintain: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
    # Adds Redis commands to the pipeline that acknowledges a stored batch.
    before_ack: Callable[[Any], None] | None = None


def entry_ms(entry_id: bytes) -> int:
    """When an entry entered its stream: the milliseconds part of its id (Redis's clock)."""
    return int(entry_id.split(b"-")[0])


@dataclass(slots=True)
class Batch:
    entry_ids: list[bytes]
    events: list[Any]

    def entered_until_ms(self) -> int:
        """When the newest of its entries entered the stream (Redis's clock, from the id)."""
        return max(entry_ms(entry_id) for entry_id in self.entry_ids)


class Flusher:
    def __init__(
        self,
        redis: RedisClient,
        dsn: str,
        sink: Sink,
        *,
        group: str = "flushers",
        batch_size: int = 10_000,
        max_wait_ms: int = 200,
        claim_idle_ms: int = 30_000,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.dsn = dsn
        self.sink = sink
        self.group = group
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        self.claim_idle_ms = claim_idle_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self._conn: asyncpg.Connection | None = None
        self._next_claim = 0.0
        self._next_maintenance = 0.0
        self._failpoint = os.environ.get(FAILPOINT_ENV, "")
        self._stream_label = sink.stream

    # -- Redis side ---------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            # From "0": entries written before any flusher existed are delivered too.
            await self.redis.xgroup_create(self.sink.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # Registered at once, so operators see every running flusher in XINFO CONSUMERS.
        await self.redis.xgroup_createconsumer(self.sink.stream, self.group, self.consumer)

    def _take(self, batch: Batch, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            batch.entry_ids.append(entry_id)
            payload = fields.get(EVENTS_FIELD) if fields else None
            if payload:  # an entry deleted after delivery has no fields: only acknowledge it
                batch.events.extend(orjson.loads(payload))

    async def _claim(self, batch: Batch) -> None:
        start = "0-0"
        while len(batch.events) < self.batch_size:
            start, entries, _deleted = await self.redis.xautoclaim(
                self.sink.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=start,
                count=100,
            )
            if entries:
                metrics.entries_claimed.labels(self._stream_label).inc(len(entries))
                log.warning(
                    "claimed entries of a stopped flusher",
                    extra={"stream": self.sink.stream, "entries": len(entries)},
                )
            self._take(batch, entries)
            if start in (b"0-0", "0-0"):
                break

    async def read_batch(self, *, block: bool = True) -> Batch:
        batch = Batch([], [])
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + max(self.claim_idle_ms / 4000, 0.05)
            await self._claim(batch)
        deadline = time.monotonic() + self.max_wait_ms / 1000
        while len(batch.events) < self.batch_size:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if block and remaining_ms <= 0:
                break
            response = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                {self.sink.stream: ">"},
                count=1000,
                block=max(remaining_ms, 1) if block else None,
            )
            if not response:
                break
            replies: Any = response  # [[stream, [(id, fields), …]]]
            self._take(batch, replies[0][1])
        return batch

    async def acknowledge(self, batch: Batch) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            if self.sink.before_ack is not None:
                self.sink.before_ack(pipe)
            pipe.xack(self.sink.stream, self.group, *batch.entry_ids)
            pipe.xdel(self.sink.stream, *batch.entry_ids)
            await pipe.execute()

    # -- PostgreSQL side ----------------------------------------------------------------------

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, command_timeout=60)
            await self.sink.prepare(self._conn)
        if self.sink.maintain and time.monotonic() >= self._next_maintenance:
            await self.sink.maintain(self._conn)
            self._next_maintenance = time.monotonic() + 3600
        return self._conn

    async def store(self, batch: Batch) -> int:
        """Write the batch, retrying until PostgreSQL takes it. Returns the events newly stored.

        Transient failures (PostgreSQL gone, failover to read-only, disk full, deadlock,
        serialization failure) are retried on a fresh connection: the batch is still ours,
        unacknowledged. A batch refused for what it holds would block the stream forever, so it
        is set aside in `dead_letters` (PostgreSQL) with the error, for a person to look at and
        replay, and acknowledged. (Sinks that can refuse one event alone do so themselves.)
        """
        delay = 0.1
        refused: BaseException | None = None
        while True:
            try:
                conn = await self._connection()
                if refused is not None:
                    await dead_letters.add(conn, self.sink.stream, batch.events, repr(refused))
                    return 0
                return await self.sink.store(conn, batch)
            except RetryLater as exc:
                log.info("batch not ready, retrying", extra={"reason": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                if refused is None and not is_transient(exc):
                    metrics.errors.labels("flusher_dead_letter").inc()
                    log.error("batch refused: moved to dead letters", extra={"error": repr(exc)})
                    refused = exc
                    continue
                # A flusher must not die of an outage: start again on a fresh connection.
                metrics.errors.labels("flusher_postgres").inc()
                log.error("postgres write failed, retrying", extra={"error": repr(exc)})
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- The loop -----------------------------------------------------------------------------

    async def flush_once(self, *, block: bool = True) -> int:
        """Read, store and acknowledge one batch. Returns the events read (0: nothing to do)."""
        batch = await self.read_batch(block=block)
        if not batch.entry_ids:
            return 0
        started = time.perf_counter()
        stored = await self.store(batch) if batch.events else 0
        if self._failpoint == "kill-after-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        await self.acknowledge(batch)
        metrics.flush_duration.observe(time.perf_counter() - started)
        metrics.flush_batch_size.observe(len(batch.events))
        metrics.events_flushed.labels(self._stream_label).inc(stored)
        metrics.events_duplicate.labels(self._stream_label).inc(len(batch.events) - stored)
        return len(batch.events)

    async def run(self, *, burst: bool = False, stop: asyncio.Event | None = None) -> None:
        """Flush until `stop` is set; in burst mode, until the stream is drained."""
        stop = stop or asyncio.Event()
        while not stop.is_set():  # Redis may not be up yet: wait for it, as for PostgreSQL
            try:
                await self.ensure_group()
                break
            except REDIS_UNAVAILABLE as exc:
                log.error("redis unreachable, waiting", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
        while not stop.is_set():
            try:
                n = await self.flush_once(block=not burst)
            except REDIS_UNAVAILABLE as exc:
                metrics.errors.labels("flusher_redis").inc()
                log.error("redis read failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            if burst and n == 0:
                break
        if self._conn is not None:
            await self._conn.close()
