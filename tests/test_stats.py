"""Statistics for merchants and advocates: they equal the ledger and the click log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis

from app.pipeline.events import EVENTS_FIELD
from app.services.visitors import rebuild_visitor_counts
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import BROWSER_UA, auth, flush, make_advocate, make_program
from tests.test_conversions import RULES, click, post


async def test_stats_follow_the_funnel_and_equal_the_ledger(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    ben = await make_advocate(client, merchant, program, "cust-ben")
    click_id = await click(client, anna["links"][0])
    await client.get(f"/r/{anna['links'][0]['code']}", headers={"user-agent": "Googlebot/2.1"})
    await click(client, ben["links"][0])
    await post(client, merchant, {"event_id": "s1", "type": "signup", "click_id": click_id})
    await post(client, merchant, {
        "event_id": "p1", "type": "purchase", "order_id": "p1", "amount_minor": 10_000,
        "currency": "EUR", "click_id": click_id, "customer_id": "c1"})  # fmt: skip
    await post(client, merchant, {
        "event_id": "r1", "type": "refund", "refund_of": "p1", "amount_minor": 5_000,
        "currency": "EUR"})  # fmt: skip
    await flush(settings)

    stats = (await client.get(f"/v1/advocates/{anna['id']}/stats", headers=auth(merchant))).json()
    assert stats["clicks"] == 1 and stats["bot_clicks"] == 1 and stats["unique_visitors"] == 1
    assert (stats["signups"], stats["purchases"], stats["refunds"]) == (1, 1, 1)
    assert stats["revenue_minor"] == {"EUR": 5_000}
    assert stats["rewards_minor"]["EUR"]["pending"] == 500 + 500  # advocate and friend, halved
    assert stats["rewards_minor"]["EUR"]["reversed"] == 500 + 500

    ledger = await db.fetch(
        "SELECT e.to_state, e.from_state, e.amount_minor FROM reward_entries e"
        " JOIN rewards r ON r.id = e.reward_id WHERE r.advocate_id = $1",
        anna["id"],
    )
    for state, amount in stats["rewards_minor"]["EUR"].items():
        entered = sum(e["amount_minor"] for e in ledger if e["to_state"] == state)
        left = sum(e["amount_minor"] for e in ledger if e["from_state"] == state)
        assert amount == entered - left, state

    whole = (await client.get(f"/v1/programs/{program['id']}/stats", headers=auth(merchant))).json()
    assert whole["clicks"] == 2 and whole["purchases"] == 1


async def test_stats_of_another_merchants_advocate_are_404(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant
) -> None:
    program = await make_program(client, merchant)
    anna: dict[str, Any] = await make_advocate(client, merchant, program, "cust-anna")
    for path in (f"/v1/advocates/{anna['id']}/stats", f"/v1/programs/{program['id']}/stats"):
        assert (await client.get(path, headers=auth(other_merchant))).status_code == 404
    token = await client.post(
        f"/v1/advocates/{anna['id']}/dashboard-token", headers=auth(other_merchant)
    )
    assert token.status_code == 404


async def test_program_stats_read_the_daily_counts_and_equal_the_click_log(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
    redis: Redis,
) -> None:  # fmt: skip
    program = await make_program(client, merchant)
    links = [(await make_advocate(client, merchant, program, f"c{n}"))["links"][0] for n in (1, 2)]
    browser = {"user-agent": BROWSER_UA}
    for n in range(12):  # twelve browsers, each visiting both advocates (with its cookie)
        client.cookies.clear()
        await client.get(f"/r/{links[0]['code']}", headers=browser)
        await client.get(f"/r/{links[1]['code']}", headers=browser)
        if n % 4 == 0:
            await client.get(f"/r/{links[1]['code']}", headers={"user-agent": "Googlebot/2.1"})
    await flush(settings)
    # Everything delivered again, with one new click: the slow path stores and counts the new
    # click only.
    replay = [
        [r["click_id"].hex, str(r["link_id"]), r["visitor_id"].hex, None, None, r["user_agent"],
         None, None, "G"]
        for r in await db.fetch("SELECT * FROM clicks")
    ]  # fmt: skip
    client.cookies.clear()
    await client.get(f"/r/{links[0]['code']}", headers=browser)
    await redis.xadd(settings.click_stream, {EVENTS_FIELD: orjson.dumps(replay)})
    await flush(settings)

    truth = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE NOT is_bot) AS human, count(*) FILTER (WHERE is_bot) AS bot,"
        " count(DISTINCT visitor_id) FILTER (WHERE NOT is_bot) AS visitors FROM clicks"
    )
    assert tuple(truth) == (25, 3, 13)
    url = f"/v1/programs/{program['id']}/stats"
    stats = (await client.get(url, headers=auth(merchant))).json()
    assert (stats["clicks"], stats["bot_clicks"], stats["unique_visitors"]) == (25, 3, 13)

    # Redis lost the visitor counts: they are rebuilt from the click log.
    await redis.flushdb()
    assert (await client.get(url, headers=auth(merchant))).json()["unique_visitors"] == 0
    assert await rebuild_visitor_counts(db, redis) == 1
    assert (await client.get(url, headers=auth(merchant))).json()["unique_visitors"] == 13


async def test_the_daily_series_adds_up_to_the_funnel(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    click_id = await click(client, anna["links"][0])
    await client.get(f"/r/{anna['links'][0]['code']}", headers={"user-agent": "Googlebot/2.1"})
    body = {"event_id": "o-1", "type": "purchase", "order_id": "o-1", "amount_minor": 5000,
            "currency": "EUR", "customer_id": "friend-1", "click_id": click_id}  # fmt: skip
    assert (await post(client, merchant, body)).status_code == 202
    await flush(settings)
    h = auth(merchant)
    series = (await client.get(f"/v1/programs/{program['id']}/daily", headers=h)).json()
    assert len(series["days"]) == 30 and series["end"] == datetime.now(UTC).date().isoformat()
    funnel = (await client.get(f"/v1/programs/{program['id']}/stats", headers=h)).json()
    for name in ("clicks", "bot_clicks", "purchases", "signups"):
        assert sum(d[name] for d in series["days"]) == funnel[name], name
    assert series["days"][-1]["revenue_minor"] == {"EUR": 5000}
    backwards = await client.get(f"/v1/programs/{program['id']}/daily", headers=h,
                                 params={"start": "2026-02-01", "end": "2026-01-01"})  # fmt: skip
    assert backwards.status_code == 422 and backwards.json()["error"]["field"] == "query.start"


async def test_clicks_and_conversions_are_broken_down_by_channel(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    email = await client.post(f"/v1/advocates/{anna['id']}/links", json={"channel": "email"},
                              headers=auth(merchant))  # fmt: skip
    assert email.status_code == 201, email.text
    for _ in range(2):
        client.cookies.clear()
        await click(client, anna["links"][0])
    client.cookies.clear()
    by_email = await click(client, email.json())
    await client.get(f"/r/{email.json()['code']}", headers={"user-agent": "Googlebot/2.1"})
    body = {"event_id": "o-1", "type": "purchase", "order_id": "o-1", "amount_minor": 5000,
            "currency": "EUR", "customer_id": "friend-1", "click_id": by_email}  # fmt: skip
    assert (await post(client, merchant, body)).status_code == 202
    await flush(settings)
    answer = await client.get(f"/v1/programs/{program['id']}/channels", headers=auth(merchant))
    channels = {c["channel"]: c for c in answer.json()["channels"]}
    assert (channels["default"]["clicks"], channels["email"]["clicks"]) == (2, 1)
    assert channels["email"]["bot_clicks"] == 1 and channels["email"]["purchases"] == 1
    assert channels["email"]["revenue_minor"] == {"EUR": 5000}
    assert channels["default"]["purchases"] == 0
    # They add up to the program's counts, and to the click log.
    totals = await db.fetchrow("SELECT sum(human) AS h, sum(bot) AS b FROM program_click_counts")
    assert sum(c["clicks"] for c in channels.values()) == totals["h"] == 3
    assert sum(c["bot_clicks"] for c in channels.values()) == totals["b"] == 1
