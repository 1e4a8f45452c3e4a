"""Group commit of events (clicks, conversions) into a Redis stream.

Every redirect hands its click to `EventBuffer.add` and waits until the click is durable. Clicks
that arrive while a Redis write is in flight are collected and written together by the next one,
as one XADD per `max_batch` clicks, in one round trip. So under load the cost of Redis is paid
once per batch, not once per click, and no request is answered before its click is acknowledged.

When Redis cannot take a batch (down, timing out, or out of memory), the batch is appended to the
local spool and fsync'd instead; a background task replays the spool into the stream once Redis
answers again. Only if the disk fails too is an event lost; that is counted
(`referral_events_lost_total`) and logged, and the batch's future fails with `EventsLost`, so no
caller can take it for written (the redirect still sends the shopper on; a postback answers 503).

Events arrive encoded (one JSON value each, made by the caller before it waits): a batch is only
joined, so one event can never make the write of its neighbours fail.

An event may also come with conditions (`admit`: a quota window, a nonce, an idempotency key;
app/pipeline/admission.py): a batch holding such events is decided and written by one
server-side script instead of the plain XADD, still one round trip, and each of those events'
futures resolves to its own outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from redis.asyncio import RedisCluster
from redis.asyncio.connection import Connection
from redis.exceptions import AskError
from redis.exceptions import ConnectionError as RedisConnectionError

from app import metrics
from app.pipeline.admission import ADMITTED_BLIND, Admission, Admitted, Admitter, Outcome
from app.pipeline.events import EVENTS_FIELD
from app.pipeline.redis_client import REDIS_UNAVAILABLE, RedisClient, new_connection_for
from app.pipeline.spool import Spool

log = logging.getLogger(__name__)

T = TypeVar("T")


class EventsLost(Exception):
    """The batch could be written neither to Redis nor to the spool."""


class _BatchWritten(asyncio.Future[None]):
    """Resolves when a batch is durable. All the batch's requests await this one future, so one
    of them being cancelled must not cancel it for the others: it refuses cancellation, and a
    cancelled waiter gets its CancelledError once the batch is written."""

    def cancel(self, msg: Any = None) -> bool:
        return False


class EventBuffer:
    def __init__(
        self,
        redis: RedisClient,
        stream: str,
        spool: Spool,
        *,
        max_batch: int = 512,
        write_timeout: float = 0.5,
        replay_interval: float = 1.0,
        writers: int = 2,
        behind: Sequence[EventBuffer] = (),
    ) -> None:
        self._redis = redis
        # Events of this buffer never overtake those spooled by `behind` (conversions behind the
        # clicks they may refer to): while one of those has spool files, this one spools too,
        # and replays only after they have replayed.
        self._behind = behind
        self._stream = stream
        # "XADD <stream> * e", framed in RESP once: each entry then only adds its payload.
        self._xadd_head = b"*5\r\n" + b"".join(
            b"$%d\r\n%b\r\n" % (len(part), part)
            for part in (b"XADD", stream.encode(), b"*", EVENTS_FIELD)
        )
        self._buffered = metrics.events_buffered.labels(stream)
        self._spooled = metrics.events_spooled.labels(stream)
        self._lost = metrics.events_lost.labels(stream)
        self._batch_sizes = metrics.event_write_batch.labels(stream)
        self._replayed = metrics.events_replayed.labels(stream)
        self._spool_pending = metrics.spool_pending.labels(stream)
        self._spool = spool
        self._max_batch = max_batch
        self._write_timeout = write_timeout
        self._replay_interval = replay_interval
        self._writers = writers
        self._events: list[bytes] = []
        self._done: _BatchWritten | None = None
        # Events with conditions (app/pipeline/admission.py): (index in _events, conditions,
        # the future of its own outcome).
        self._admissions: list[tuple[int, Admission, asyncio.Future[Admitted]]] = []
        self._admitter = Admitter()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._idle_connections: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.redis_ok = True

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Several writers: while one batch is on its way to Redis, the next one can leave at
        # once instead of waiting for it, which halves the wait of a click at moderate load.
        self._tasks = [
            *(
                asyncio.create_task(self._write_loop(), name=f"{self._stream}-writer")
                for _ in range(self._writers)
            ),
            asyncio.create_task(self._replay_loop(), name="spool-replayer"),
        ]

    async def stop(self) -> None:
        """Write what is collected, then stop the background tasks."""
        self._stopping = True
        self._wakeup.set()
        writers, others = self._tasks[: self._writers], self._tasks[self._writers :]
        await asyncio.gather(*writers)
        for task in others:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._spool.seal()
        for connection in self._idle_connections:
            await connection.disconnect()
        self._idle_connections.clear()

    @property
    def stream(self) -> str:
        return self._stream

    def spool_files(self) -> list[Path]:
        return self._spool.files()

    def has_spooled(self) -> bool:
        """Whether events of this buffer wait in its spool (one stat while nothing changed)."""
        return self._spool.has_files()

    def _waiting_behind(self) -> bool:
        return any(buffer.has_spooled() for buffer in self._behind)

    def add(self, event: bytes) -> asyncio.Future[None]:
        """Queues one encoded event (a JSON value); the future resolves once it is in Redis (or,
        when Redis is down, fsync'd in the spool), and fails with EventsLost when neither took
        it. A plain method returning the batch's future, not a coroutine: one coroutine less
        per click."""
        done = self._done
        if done is None:
            # The loop passed in, not looked up: asyncio's lookup makes a getpid() system call.
            done = self._done = _BatchWritten(loop=self._loop)
            self._wakeup.set()
        self._events.append(event)
        return done

    def admit(self, event: bytes, admission: Admission) -> asyncio.Future[Admitted]:
        """Queues one encoded event that enters the stream only if `admission` allows (its
        quota, nonce and idempotency key, checked with the whole batch in one round trip). The
        future resolves to the outcome once that is decided and, if added, the event durable;
        it fails with EventsLost like `add`. While Redis is down nothing can be checked: the
        event is spooled and answered ADDED (the consumer must be idempotent anyway)."""
        self._events.append(event)
        self._wakeup.set()
        outcome: asyncio.Future[Admitted] = asyncio.Future(loop=self._loop)
        self._admissions.append((len(self._events) - 1, admission, outcome))
        return outcome

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            if not self._stopping:
                self._wakeup.clear()
            while self._events:
                events, done, admissions = self._events, self._done, self._admissions
                self._events, self._done, self._admissions = [], None, []
                outcome: BaseException | None = None
                admitted: list[Admitted] = []
                try:
                    admitted = await self._write(events, admissions)
                except EventsLost as exc:
                    outcome = exc
                except Exception as exc:
                    # A bug, not an outage (those are handled in _write). The writer must live
                    # on, or every later request would wait forever.
                    self._lost.inc(len(events))
                    log.exception("event write failed: events lost", extra={"n": len(events)})
                    outcome = EventsLost(repr(exc))
                finally:
                    if done is not None and not done.done():
                        if outcome is None:
                            done.set_result(None)
                        else:
                            done.set_exception(outcome)
                    for i, (_, _, future) in enumerate(admissions):
                        if future.done():  # its request was cancelled
                            continue
                        if outcome is None:
                            future.set_result(admitted[i])
                        else:
                            future.set_exception(outcome)
            if self._stopping:
                return

    def _payloads(self, events: list[bytes]) -> list[bytes]:
        step = self._max_batch
        return [b"[" + b",".join(events[i : i + step]) + b"]" for i in range(0, len(events), step)]

    async def _write(
        self, events: list[bytes], admissions: list[tuple[int, Admission, Any]]
    ) -> list[Admitted]:
        """Make the batch durable; the outcomes of its admissions, in their order."""
        self._batch_sizes.observe(len(events))
        if admissions:
            return await self._write_admitted(events, admissions)
        await self._write_plain(events)
        return []

    async def _write_admitted(
        self, events: list[bytes], admissions: list[tuple[int, Admission, Any]]
    ) -> list[Admitted]:
        """One script call decides every admission and (unless this buffer waits behind
        another's spool) appends what it admits; what it admits without appending, and
        everything while Redis is unavailable, goes to the spool."""
        conditions: list[Admission | None] = [None] * len(events)
        for index, admission, _ in admissions:
            conditions[index] = admission
        behind = self._waiting_behind()
        decided = await self._in_redis(
            lambda: self._admitter.run(self._round_trip, self._stream, events, conditions,
                                       write=not behind, per_entry=self._max_batch)
        )  # fmt: skip
        if decided is None:
            # Nothing could be checked: spool all (a duplicate is stored once downstream).
            await self._to_spool(self._payloads(events), len(events))
            return [ADMITTED_BLIND] * len(admissions)
        kept = [e for e, d in zip(events, decided, strict=True) if d.outcome is Outcome.ADDED]
        if not behind:
            self._buffered.inc(len(kept))
        elif kept:
            try:
                await self._to_spool(self._payloads(kept), len(kept))
            except EventsLost:
                # Admitted but stored nowhere: let a retry be admitted again.
                await self._forget(
                    [c for c, d in zip(conditions, decided, strict=True)
                     if c is not None and d.outcome is Outcome.ADDED]
                )  # fmt: skip
                raise
        return [decided[index] for index, _, _ in admissions]

    async def _forget(self, admissions: list[Admission | None]) -> None:
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            async with self._redis.pipeline(transaction=False) as pipe:
                for admission in admissions:
                    if admission is not None:
                        pipe.delete(admission.key)
                        pipe.delete(admission.marker_key)
                await pipe.execute()

    async def _write_plain(self, events: list[bytes]) -> None:
        payloads = self._payloads(events)
        if self._waiting_behind():
            await self._to_spool(payloads, len(events))
            return
        if await self._in_redis(lambda: self.deliver(payloads)) is None:
            await self._to_spool(payloads, len(events))
        else:
            self._buffered.inc(len(events))

    async def _in_redis(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call`'s result within the write timeout; None when Redis did not take it (it is
        then marked unreachable) or is marked so already: degraded, no request waits for a
        timeout, and the replay loop probes Redis and switches back as soon as it answers."""
        if not self.redis_ok:
            return None
        try:
            async with asyncio.timeout(self._write_timeout):
                result = await call()
        except REDIS_UNAVAILABLE as exc:
            self._mark_redis(False, exc)
            return None
        self._mark_redis(True)
        return result

    async def _to_spool(self, payloads: list[bytes], n: int) -> None:
        try:
            await self._spool.append(payloads)
        except OSError as exc:
            self._lost.inc(n)
            log.exception("spool write failed: events lost", extra={"n": n})
            raise EventsLost(repr(exc)) from exc
        self._spooled.inc(n)

    async def deliver(self, payloads: list[bytes]) -> list[Any]:
        """XADD each payload as one stream entry, all in one round trip (`_round_trip`); the
        entries' ids."""
        command: list[bytes] = []
        for payload in payloads:
            command += (self._xadd_head, b"$%d\r\n" % len(payload), payload, b"\r\n")
        return await self._round_trip(command, len(payloads))

    async def _round_trip(self, command: list[bytes], replies: int) -> list[Any]:
        """Send commands framed by the caller and read their replies, in one round trip.

        On a connection of its own, the commands framed here (RESP: for XADD one fixed head per
        stream, then the payload's length and bytes) and sent as one write: redis-py's general
        per-command machinery (pool checkout, retry wrapper, argument packing) cost as much per
        batch as the rest of a click. redis-py still opens the connection (AUTH, SELECT, TLS)
        and hiredis parses the replies. Raises on an error reply.
        """
        connection = self._idle_connections.pop() if self._idle_connections else None
        if connection is None:
            # Without redis-py's own socket timeout, which would wrap each send in wait_for (a
            # task per batch) and each reply in a timeout scope: the caller's one timeout covers
            # the whole round trip.
            connection = await new_connection_for(self._redis, self._stream, socket_timeout=None)
        try:
            await connection.send_packed_command(command, check_health=False)
            answers = [await connection.read_response() for _ in range(replies)]
        except BaseException as exc:
            # A reply may be left unread: this connection's state is unknown, drop it.
            await connection.disconnect(nowait=True)
            moved_or_gone = isinstance(exc, AskError | RedisConnectionError | OSError)
            if moved_or_gone and isinstance(self._redis, RedisCluster):
                await self._follow_slot_move()
            raise
        self._idle_connections.append(connection)
        return answers

    async def _follow_slot_move(self) -> None:
        """The stream's hash slot moved to another primary (resharding, failover): forget the
        connections to the old one, and let the cluster client learn the new owner by sending one
        command for the stream through it (redis-py follows the redirect and updates its map).
        The failed batch is spooled meanwhile and replayed to the new owner."""
        for connection in self._idle_connections:
            await connection.disconnect(nowait=True)
        self._idle_connections.clear()
        with contextlib.suppress(*REDIS_UNAVAILABLE):
            await self._redis.xlen(self._stream)

    def _mark_redis(self, ok: bool, exc: BaseException | None = None) -> None:
        if ok != self.redis_ok:
            self.redis_ok = ok
            metrics.degraded.set(0 if ok else 1)
            if ok:
                log.warning("redis reachable again: leaving degraded mode")
            else:
                log.error("redis write failed: spooling clicks to disk", extra={"error": repr(exc)})

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self._replay_interval)
            files = self._spool.files()
            self._spool_pending.set(len(files))
            if self.redis_ok and not files:
                continue
            if files and self._waiting_behind():
                continue
            try:
                async with asyncio.timeout(self._write_timeout):
                    await self._redis.ping()
                self._mark_redis(True)
                if files:
                    await self._spool.replay(self._replay_batch)
            except REDIS_UNAVAILABLE:
                continue

    async def _replay_batch(self, payloads: list[bytes]) -> None:
        async with asyncio.timeout(self._write_timeout * 10):
            await self.deliver(payloads)
        self._replayed.inc(sum(len(orjson.loads(p)) for p in payloads))
