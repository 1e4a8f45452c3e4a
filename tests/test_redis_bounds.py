"""Redis holds the backlog and bounded state only: every other key has a TTL (or a stated
bound), and a link change reaches Redis even when the first write fails."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.pipeline import keys
from app.services import links as links_service
from app.settings import Settings
from app.storage.link_cache import publish_link
from app.storage.merchants import CreatedMerchant
from tests.conftest import BROWSER_UA, auth, flush, make_advocate, make_program, serving
from tests.test_conversions import RULES, click, post

# Bounded otherwise: one HyperLogLog of at most 12 KB per program.
_BOUNDED_WITHOUT_TTL = ("program-visitors:",)


async def test_every_key_but_the_backlog_expires(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, redis: Redis
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    advocate = await make_advocate(client, merchant, program, "cust-anna")
    rcid = await click(client, advocate["links"][0])
    await client.get("/t/pixel.gif", params={"m": str(merchant.id), "order_id": "9"})
    await post(client, merchant, {"event_id": "e1", "type": "signup", "click_id": rcid})
    await client.get("/v1/programs", headers={"authorization": "Bearer rk_unknown"})
    await flush(settings)
    await client.get(f"/r/{advocate['links'][0]['code']}", headers={"user-agent": BROWSER_UA})
    unbounded = []
    async for key in redis.scan_iter(count=1000):
        name = key.decode()
        if await redis.type(key) == b"stream" or name.startswith(_BOUNDED_WITHOUT_TTL):
            continue
        if await redis.ttl(key) < 0:
            unbounded.append(name)
    assert unbounded == []


async def test_a_processed_conversion_leaves_no_queued_mark(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, redis: Redis
) -> None:
    await make_program(client, merchant, rules=RULES)
    answer = await post(client, merchant, {"event_id": "e1", "type": "signup"})
    mark = keys.conversion_queued(settings.conversion_stream, answer.json()["id"])
    assert await redis.exists(mark)
    await flush(settings)
    assert not await redis.exists(mark)


async def test_a_link_disabled_while_redis_refuses_the_write_stops_redirecting_once_it_recovers(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, redis: Redis,
    db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    program = await make_program(client, merchant)
    link = (await make_advocate(client, merchant, program, "cust-1"))["links"][0]

    async def refused(*args: Any) -> None:
        raise RedisConnectionError("redis refused the write")

    monkeypatch.setattr(links_service, "publish_link", refused)
    answer = await client.patch(
        f"/v1/links/{link['id']}", json={"active": False}, headers=auth(merchant)
    )
    assert answer.status_code == 200 and answer.json()["active"] is False  # committed
    assert b'"active":true' in await redis.get(f"link:{link['code']}")  # Redis not told yet
    assert await db.fetchval("SELECT count(*) FROM link_outbox") == 1

    monkeypatch.setattr(links_service, "publish_link", publish_link)  # Redis is back
    assert await links_service.relay_link_changes(db, redis) == 1
    assert b'"active":false' in await redis.get(f"link:{link['code']}")
    assert await db.fetchval("SELECT count(*) FROM link_outbox") == 0
    async with serving(settings) as (_, other_process):
        assert (await other_process.get(f"/r/{link['code']}")).status_code == 404


async def test_the_relay_runs_by_itself_in_every_api_process(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, redis: Redis,
    db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import asyncio

    program = await make_program(client, merchant)
    link = (await make_advocate(client, merchant, program, "cust-1"))["links"][0]
    monkeypatch.setattr(links_service, "RELAY_INTERVAL_SECONDS", 0.05)
    await db.execute("INSERT INTO link_outbox (code) VALUES ($1)", link["code"])
    await db.execute("UPDATE links SET active = false WHERE id = $1", link["id"])
    async with serving(settings):
        for _ in range(100):
            if not await db.fetchval("SELECT count(*) FROM link_outbox"):
                break
            await asyncio.sleep(0.05)
    assert b'"active":false' in await redis.get(f"link:{link['code']}")


async def test_metrics_show_redis_memory(client: httpx.AsyncClient) -> None:
    text = (await client.get("/metrics")).text
    used = [x for x in text.splitlines() if x.startswith("referral_redis_used_memory_bytes ")]
    assert used and float(used[0].split()[1]) > 0
