"""Clicks reach PostgreSQL exactly once, whatever happens to the flusher."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app.settings import Settings
from tests.conftest import BROWSER_UA, TEST_KEYRING, flush, flusher_process


async def _click(client: httpx.AsyncClient, link: dict[str, Any], n: int) -> set[str]:
    async def one() -> str:
        response = await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
        assert response.status_code == 302
        return response.headers["location"].split("rcid=")[1][:32]

    return set(await asyncio.gather(*(one() for _ in range(n))))


async def _stored(db: asyncpg.Pool) -> list[str]:
    rows = await db.fetch("SELECT replace(click_id::text, '-', '') AS id FROM clicks")
    return [r["id"] for r in rows]


async def _stream_is_drained(redis: Redis, settings: Settings) -> None:
    assert await redis.xlen(settings.click_stream) == 0
    pending = await redis.xpending(settings.click_stream, settings.flusher_group)
    assert pending["pending"] == 0


async def test_click_is_stored_once_after_a_flush(
    client: httpx.AsyncClient, link: dict[str, Any], db: asyncpg.Pool, redis: Redis,
    settings: Settings,
) -> None:  # fmt: skip
    sent = await _click(client, link, 25)
    await flush(settings)
    await flush(settings)  # a second pass finds nothing to do

    stored = await _stored(db)
    assert sorted(stored) == sorted(sent)
    row = await db.fetchrow("SELECT merchant_id, program_id, advocate_id FROM clicks LIMIT 1")
    assert str(row["advocate_id"]) == link["advocate_id"]
    await _stream_is_drained(redis, settings)


async def test_redelivered_batch_is_not_stored_twice(
    client: httpx.AsyncClient, link: dict[str, Any], db: asyncpg.Pool, redis: Redis,
    settings: Settings,
) -> None:  # fmt: skip
    sent = await _click(client, link, 10)
    # The same entries written to the stream again, as a replayed spool or a retried XADD would.
    entries = await redis.xrange(settings.click_stream)
    for _, fields in entries:
        await redis.xadd(settings.click_stream, fields)

    await flush(settings)
    assert sorted(await _stored(db)) == sorted(sent)


async def test_flusher_killed_between_commit_and_ack_loses_and_duplicates_nothing(
    client: httpx.AsyncClient, link: dict[str, Any], db: asyncpg.Pool, redis: Redis,
    settings: Settings,
) -> None:  # fmt: skip
    sent = await _click(client, link, 40)

    doomed = flusher_process(settings, burst=True, FLUSHER_FAILPOINT="kill-after-commit")
    assert await asyncio.to_thread(doomed.wait, 30) == -signal.SIGKILL
    # It committed, then died: the rows are there but the entries are still pending in Redis.
    assert sorted(await _stored(db)) == sorted(sent)
    pending = await redis.xpending(settings.click_stream, settings.flusher_group)
    assert pending["pending"] > 0

    await asyncio.sleep(settings.flush_claim_idle_ms / 1000 + 0.1)
    survivor = flusher_process(settings, burst=True)
    assert await asyncio.to_thread(survivor.wait, 30) == 0

    assert sorted(await _stored(db)) == sorted(sent)
    await _stream_is_drained(redis, settings)


async def test_two_flushers_at_once_store_every_click_exactly_once(
    client: httpx.AsyncClient, link: dict[str, Any], db: asyncpg.Pool, redis: Redis,
    settings: Settings,
) -> None:  # fmt: skip
    first = flusher_process(settings, burst=False)
    second = flusher_process(settings, burst=False)
    try:
        # Both must be reading before the clicks arrive, or this is a one-flusher test.
        for _ in range(400):
            with contextlib.suppress(ResponseError):
                group = settings.flusher_group
                if len(await redis.xinfo_consumers(settings.click_stream, group)) == 2:
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the two flushers did not both join the consumer group")
        sent: set[str] = set()
        for _ in range(10):
            sent |= await _click(client, link, 30)
            await asyncio.sleep(0.02)
        for _ in range(200):
            if len(await _stored(db)) >= len(sent):
                break
            await asyncio.sleep(0.05)
    finally:
        for process in (first, second):
            process.send_signal(signal.SIGTERM)
        for process in (first, second):
            assert await asyncio.to_thread(process.wait, 30) == 0

    stored = await _stored(db)
    assert len(stored) == len(set(stored)) == len(sent) == 300
    assert set(stored) == sent
    await _stream_is_drained(redis, settings)
    consumers = await redis.xinfo_consumers(settings.click_stream, settings.flusher_group)
    assert len(consumers) == 2 and all(c["pending"] == 0 for c in consumers)


async def test_flusher_started_before_redis_waits_for_it(
    settings: Settings, tmp_path: Any, db: asyncpg.Pool
) -> None:
    from tests.conftest import RedisServer, make_settings

    server = RedisServer(tmp_path / "late-redis")
    late = make_settings(settings.database_url, server.url, tmp_path)
    flusher = flusher_process(late, burst=False)
    try:
        await asyncio.sleep(1.0)
        assert flusher.poll() is None, "the flusher gave up while Redis was down"
        server.start()
        redis = Redis.from_url(server.url)
        for _ in range(100):
            with contextlib.suppress(ResponseError):
                if await redis.xinfo_consumers(late.click_stream, late.flusher_group):
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the flusher did not join once Redis was up")
        await redis.aclose()
    finally:
        flusher.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(flusher.wait, 30) == 0
        server.kill()


async def test_sharded_click_streams_store_every_click_once(
    database_url: str, redis_url: str, redis: Redis, db: asyncpg.Pool, tmp_path: Any
) -> None:
    from app.services.merchants import create_merchant
    from tests.conftest import auth, make_advocate, make_program, make_settings, start_app

    settings = make_settings(database_url, redis_url, tmp_path, click_stream_shards=3)
    assert settings.click_streams == ["clicks:{0}", "clicks:{1}", "clicks:{2}"]
    app, lifespan = await start_app(settings)
    merchant = await create_merchant(db, TEST_KEYRING, "Sharded Shop")
    sent: set[str] = set()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://go.test") as client:
            program = await make_program(client, merchant)
            links = [
                (await make_advocate(client, merchant, program, f"c{n}"))["links"][0]
                for n in range(12)
            ]
            for link in links:
                sent |= await _click(client, link, 5)
            assert (await client.get("/v1/me", headers=auth(merchant))).status_code == 200
    finally:
        await lifespan.__aexit__(None, None, None)

    lengths = [await redis.xlen(s) for s in settings.click_streams]
    assert sum(1 for n in lengths if n) >= 2, lengths  # the links really are spread
    await flush(settings)
    assert sorted(await _stored(db)) == sorted(sent)
    for stream in settings.click_streams:
        assert await redis.xlen(stream) == 0
