"""The flusher's sink for "conversions": a batch processed in lanes, each conversion alone or
with its neighbours.

A flusher processes a batch's conversions in a few lanes at once (`CONVERSION_WORKERS`). In a
lane, runs of signups and purchases that name a known referral code are decided together, a
group per transaction (app/services/grouped.py); every other conversion in a transaction of its
own (app/services/processing.py); in stream order either way. One that fails goes alone to
dead_letters (a group that fails is redone one by one). Before a batch is processed, the sink
waits until every click that entered the Redis click streams before the batch's conversions
entered theirs has been stored, so a conversion posted a millisecond after its click still finds
it. (Both times are Redis's, from the entry ids. The API keeps the order when Redis fails: while
clicks wait in its spool, conversions are spooled behind them.)
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

import asyncpg

from app import metrics
from app.attribution.fraud import Decision
from app.pipeline import keys
from app.pipeline.events import (
    ConversionEvent,
    PixelEvent,
    StreamedConversion,
    decode_conversion,
)
from app.pipeline.flusher import Batch, RetryLater, entry_ms
from app.pipeline.redis_client import RedisClient
from app.services import grouped
from app.services.batch_reads import BatchReads
from app.services.processing import process
from app.storage import dead_letters
from app.storage.db import is_transient

log = logging.getLogger(__name__)


class ConversionSink:
    def __init__(
        self,
        redis: RedisClient,
        click_streams: list[str],
        wait_seconds: float = 10.0,
        stream: str = "conversions",
        dsn: str | None = None,
        workers: int = 1,
    ) -> None:
        self._redis = redis
        self._click_streams = click_streams
        self._wait_seconds = wait_seconds
        self._stream = stream
        self._processed: list[UUID] = []
        self._dsn = dsn
        self._workers = workers if dsn else 1
        # The lanes' own connections beyond the flusher's (opened on first use).
        self._connections: list[asyncpg.Connection] = []

    async def prepare(self, conn: asyncpg.Connection) -> None:
        return None

    async def _clicks_flushed_until(self, entered_ms: int) -> None:
        """Wait until the click streams hold nothing that entered them by `entered_ms`
        (acknowledged clicks are deleted, so a stream's first entry is its oldest click not yet
        stored)."""
        deadline = time.monotonic() + self._wait_seconds
        while True:
            heads = [await self._redis.xrange(s, count=1) for s in self._click_streams]
            if all(not h or entry_ms(cast(bytes, h[0][0])) > entered_ms for h in heads):
                return
            if time.monotonic() > deadline:
                raise RetryLater("clicks older than these conversions are not stored yet")
            await asyncio.sleep(0.02)

    def before_ack(self, pipe: Any) -> None:
        """Processed conversions are in PostgreSQL now: drop their "queued" marks (one DEL: they
        share the conversion stream's hash slot)."""
        if self._processed:
            pipe.delete(*(keys.conversion_queued(self._stream, c) for c in self._processed))
        self._processed = []

    async def store(self, conn: asyncpg.Connection, batch: Batch) -> int:
        """Process the batch in up to `workers` lanes at once, one PostgreSQL connection each
        (the time goes to round trips, not to Python: one lane waits on PostgreSQL most of the
        time). Each conversion in a transaction of its own, so no transaction holds the locks of
        two conversions (two lanes could then wait on each other). The conversions of one order
        or customer share a lane, in stream order. A transient failure (outage, deadlock,
        failover) in any lane stops them all, and the flusher retries the batch: storing is
        idempotent."""
        await self._clicks_flushed_until(batch.entered_until_ms())
        self._processed = []
        lanes: list[list[dict[str, Any]]] = [[] for _ in range(self._workers)]
        for raw in batch.events:
            lanes[_lane_of(raw, self._workers)].append(raw)
        busy = [lane for lane in lanes if lane]
        connections = [conn, *await self._lane_connections(len(busy) - 1)]
        outcomes = [_Lane() for _ in busy]
        try:
            async with asyncio.TaskGroup() as group:
                for lane, connection, outcome in zip(busy, connections, outcomes, strict=False):
                    group.create_task(self._process_lane(connection, lane, outcome))
        except BaseException as exc:
            await self._drop_lane_connections()  # their state is unknown after a cancel
            failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            raise failures[0] from None
        for outcome in outcomes:
            self._processed += outcome.processed
            _count_decisions(outcome.decided)  # committed
            for path, n in outcome.paths.items():
                metrics.conversions_processed.labels(path).inc(n)
        return sum(outcome.stored for outcome in outcomes)

    async def _process_lane(
        self, conn: asyncpg.Connection, events: list[dict[str, Any]], out: _Lane
    ) -> None:
        """The lane's conversions in stream order: runs of those the grouped path can decide
        as groups, the others one by one."""
        decoded: list[tuple[dict[str, Any], StreamedConversion | Exception]] = []
        for raw in events:
            try:
                decoded.append((raw, decode_conversion(raw)))
            except Exception as exc:  # dead-lettered below, in its turn
                decoded.append((raw, exc))
        reads = BatchReads()
        await reads.prefetch(
            conn,
            (e for _, e in decoded if isinstance(e, ConversionEvent)),
            ((e.merchant_id, e.order_id) for _, e in decoded if isinstance(e, PixelEvent)),
        )
        run: list[tuple[dict[str, Any], grouped.Planned]] = []
        for raw, event in decoded:
            plan = grouped.plan(reads, event) if isinstance(event, ConversionEvent) else None
            if plan is not None:
                run.append((raw, plan))
                if len(run) < grouped.MOST:
                    continue
            if run:
                await self._process_group(conn, run, reads, out)
                run = []
            if plan is None:
                await self._process_one(conn, raw, event, reads, out)
        if run:
            await self._process_group(conn, run, reads, out)

    async def _process_group(
        self, conn: asyncpg.Connection, run: list[tuple[dict[str, Any], grouped.Planned]],
        reads: BatchReads, out: _Lane,
    ) -> None:  # fmt: skip
        decided: list[Decision] = []
        try:
            async with conn.transaction():
                stored = await grouped.process(conn, [plan for _, plan in run], decided)
        except Exception as exc:
            if is_transient(exc) and not _lock_table_full(exc):
                raise  # outage, deadlock, failover: the flusher retries the batch
            # Something in the group cannot be processed: one by one, it is set aside alone.
            # Or PostgreSQL's lock table is full (a group holds a few advisory locks per
            # conversion; with many lanes and flushers at once they can fill it): retried whole,
            # the same groups would fill it again; one by one, a conversion needs four.
            log.warning("a group of conversions failed: processed one by one",
                        extra={"conversions": len(run), "error": repr(exc)})  # fmt: skip
            out.paths["group_redone"] += 1
            for raw, plan in run:
                await self._process_one(conn, raw, plan.event, reads, out)
            return
        out.paths["grouped"] += len(run)
        out.stored += stored
        out.processed += [plan.event.id for _, plan in run]
        out.decided += decided

    async def _process_one(
        self, conn: asyncpg.Connection, raw: dict[str, Any],
        event: StreamedConversion | Exception, reads: BatchReads, out: _Lane,
    ) -> None:  # fmt: skip
        try:
            if isinstance(event, Exception):
                raise event
            decided: list[Decision] = []
            async with conn.transaction():
                out.stored += await process(conn, event, decided, reads)
            out.paths["single"] += 1
            if isinstance(event, ConversionEvent):
                out.processed.append(event.id)
            out.decided += decided
        except Exception as exc:
            if is_transient(exc):
                raise  # outage, deadlock, failover: the flusher retries the batch
            # One conversion that cannot be processed must not hold back the others: it is
            # set aside, with the error, for a person to look at and replay.
            log.exception("conversion moved to dead letters", extra={"id": raw.get("id")})
            await dead_letters.add(conn, self._stream, [raw], repr(exc))

    async def _lane_connections(self, n: int) -> list[asyncpg.Connection]:
        self._connections = [c for c in self._connections if not c.is_closed()]
        while len(self._connections) < n:
            assert self._dsn is not None  # workers > 1 only with a dsn
            self._connections.append(await asyncpg.connect(self._dsn, command_timeout=60))
        return self._connections[:n]

    async def _drop_lane_connections(self) -> None:
        for connection in self._connections:
            connection.terminate()
        self._connections = []


@dataclass
class _Lane:
    stored: int = 0
    processed: list[UUID] = field(default_factory=list)
    decided: list[Decision] = field(default_factory=list)
    paths: Counter[str] = field(default_factory=Counter)  # grouped, single, group_redone


def _lane_of(raw: dict[str, Any], lanes: int) -> int:
    """The lane of a conversion: by its order (a refund by the order it refunds), else its
    customer, else its subscription; pixels by their order. (Advocates are known only once
    attributed; their locks are taken one conversion at a time.)"""
    if lanes == 1:
        return 0
    key = (raw.get("refund_of") or raw.get("order_id") or raw.get("customer_id")
           or raw.get("subscription_id") or raw.get("id") or "")  # fmt: skip
    return zlib.crc32(f"{raw.get('merchant_id')}:{key}".encode()) % lanes


def _count_decisions(decisions: list[Decision]) -> None:
    for decision in decisions:
        for finding in decision.findings:
            metrics.fraud_decisions.labels(finding.rule, finding.action.value).inc()


def _lock_table_full(exc: BaseException) -> bool:
    """PostgreSQL's "out of shared memory" (53200): its lock table, `max_locks_per_transaction`
    times `max_connections` entries shared by every transaction, is full."""
    return isinstance(exc, asyncpg.exceptions.OutOfMemoryError)
