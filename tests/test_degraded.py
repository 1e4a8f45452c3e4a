"""Redis unreachable: the redirect still answers, clicks are spooled to disk and replayed."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from redis.asyncio import Redis

from app.main import TrackingApp
from app.pipeline.event_buffer import EventBuffer, EventsLost
from app.pipeline.flusher import entry_ms
from app.pipeline.spool import Spool
from app.settings import Settings
from app.storage.link_cache import publish_link
from app.storage.links import redirect_record
from app.storage.merchants import CreatedMerchant
from tests.conftest import (
    BROWSER_UA,
    RedisServer,
    flush,
    free_port,
    make_advocate,
    make_program,
    make_settings,
    serving,
    start_app,
)
from tests.test_conversions import RULES, click, post, read


@contextlib.asynccontextmanager
async def running_buffer(redis: Redis, stream: str, tmp_path: Path) -> AsyncIterator[EventBuffer]:
    """An EventBuffer with its writers running; stopped (and flushed) on exit."""
    buffer = EventBuffer(redis, stream, Spool(tmp_path / "spool"))
    buffer.start()
    try:
        yield buffer
    finally:
        await buffer.stop()


async def _metric(client: httpx.AsyncClient, name: str) -> float:
    text = (await client.get("/metrics")).text
    [line] = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


async def test_redis_down_spools_clicks_and_replays_them_when_it_returns(
    link: dict[str, Any],
    db: asyncpg.Pool,
    database_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    settings = make_settings(database_url, redis_server.url, tmp_path)
    private = Redis.from_url(redis_server.url)
    record = await redirect_record(db, link["code"])
    assert record is not None
    await publish_link(private, link["code"], record)
    await private.aclose()

    app: TrackingApp
    app, lifespan = await start_app(settings)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.20", 1))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="https://go.test") as client:
            before = await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
            assert before.status_code == 302

            redis_server.kill()
            during = [
                await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
                for _ in range(20)
            ]
            assert all(r.status_code == 302 for r in during)
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "degraded"
            assert ready.json()["spool_files"] >= 1
            assert await _metric(client, "referral_degraded") == 1.0
            assert list((tmp_path / "spool").glob("*.spool"))

            redis_server.start()  # same port, same AOF: the earlier click is still there
            for _ in range(100):
                if not list((tmp_path / "spool").glob("*.spool")):
                    break
                await asyncio.sleep(0.05)
            assert not list((tmp_path / "spool").glob("*.spool")), "spool not replayed"
            assert (await client.get("/readyz")).json()["status"] == "ok"
            assert await _metric(client, "referral_degraded") == 0.0
    finally:
        await lifespan.__aexit__(None, None, None)

    await flush(settings)
    sent = {r.headers["location"].split("rcid=")[1][:32] for r in [before, *during]}
    rows = await db.fetch("SELECT replace(click_id::text, '-', '') AS id FROM clicks")
    assert sorted(r["id"] for r in rows) == sorted(sent)


async def test_a_batch_that_could_not_be_written_is_never_reported_written(
    settings: Settings, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_buffer(redis, "buffer-test", tmp_path) as buffer:
        deliver = buffer.deliver

        async def broken(payloads: list[bytes]) -> None:
            raise RuntimeError("a bug in the writer")

        monkeypatch.setattr(buffer, "deliver", broken)
        with pytest.raises(EventsLost):
            await asyncio.wait_for(buffer.add(b'"lost"'), 2)
        monkeypatch.setattr(buffer, "deliver", deliver)
        await asyncio.wait_for(buffer.add(b'"fine"'), 2)  # the writer is still alive
    assert await redis.xlen("buffer-test") == 1


async def test_a_spool_that_fails_too_fails_the_waiters(settings: Settings, tmp_path: Path) -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.1)
    spool_dir = tmp_path / "not-a-dir"
    spool_dir.write_text("a file where the spool directory should be")
    buffer = EventBuffer(down, "nowhere", Spool(spool_dir / "spool"))
    buffer.start()
    try:
        with pytest.raises(EventsLost):
            await asyncio.wait_for(buffer.add(b'"click"'), 5)
    finally:
        with contextlib.suppress(OSError):
            await buffer.stop()
        await down.aclose()


async def test_one_cancelled_request_does_not_fail_the_others_in_its_batch(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    # Every click of a batch awaits the same future: cancelling one waiter (a server shutting
    # down, a client's timeout) must not cancel it for the rest, nor lose any of the events.
    async with running_buffer(redis, "cancel-test", tmp_path) as buffer:

        async def click(n: int) -> None:
            await buffer.add(b'"click-%d"' % n)

        tasks = [asyncio.create_task(click(n)) for n in range(10)]
        await asyncio.sleep(0)  # all ten are waiting on one batch
        tasks[3].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [None] * 9
    entries = await redis.xrange("cancel-test")
    assert sum(len(orjson.loads(fields[b"e"])) for _, fields in entries) == 10


async def test_a_conversion_posted_while_its_click_is_spooled_is_attributed_to_it(
    client: httpx.AsyncClient, merchant: CreatedMerchant, db: asyncpg.Pool, database_url: str,
    redis_server: RedisServer, tmp_path: Path,
) -> None:  # fmt: skip
    settings = make_settings(database_url, redis_server.url, tmp_path)
    program = await make_program(client, merchant, rules=RULES)  # on the suite's own app
    link = (await make_advocate(client, merchant, program, "cust-anna"))["links"][0]
    async with serving(settings) as (app, api):
        redis_server.kill()
        click_id = await click(api, link)  # spooled
        response = await post(api, merchant, {
            "event_id": "o-1", "type": "purchase", "order_id": "1", "amount_minor": 5000,
            "currency": "EUR", "click_id": click_id, "customer_id": "cust-ben"})  # fmt: skip
        assert response.status_code == 202, response.text
        redis_server.start()
        spool = app.api.state.runtime.event_buffers
        for _ in range(100):
            if not any(b.spool_files() for b in spool):
                break
            await asyncio.sleep(0.05)
        assert not any(b.spool_files() for b in spool), "spool not replayed"

    # The conversion re-entered Redis after its click, so the flusher waits for the click.
    private = Redis.from_url(redis_server.url)
    [(click_entry, _)] = await private.xrange(settings.click_stream)
    [(conversion_entry, _)] = await private.xrange(settings.conversion_stream)
    await private.aclose()
    assert entry_ms(conversion_entry) >= entry_ms(click_entry)
    await flush(settings)
    conversion = await read(client, merchant, response.json()["id"])
    assert conversion["attribution_method"] == "click_id"
    assert conversion["advocate_id"] == link["advocate_id"]


async def test_a_spool_file_is_seen_at_once_though_the_answer_is_kept_between_changes(
    tmp_path: Path,
) -> None:
    # Conversions wait behind spooled clicks; the buffer asks per batch, and the answer kept
    # under the directory's modification time must never hide a file made or replayed since.
    directory = tmp_path / "spool"
    spool, other = Spool(directory), Spool(directory)  # two processes' spools, one directory
    assert not spool.has_files()
    directory.mkdir()
    old = 1_000_000_000
    os.utime(directory, (old, old))  # listed a long time after its last change: kept
    assert not spool.has_files()
    await other.append([b'["click"]'])  # another process spools a click
    assert spool.has_files()
    await other.seal()

    async def deliver(lines: list[bytes]) -> None:
        pass

    os.utime(directory, (old + 60, old + 60))  # a minute later than the first, still long ago
    assert spool.has_files()
    assert spool.has_files()  # now from what was kept
    assert await spool.replay(deliver) == 1
    assert not spool.has_files()
