"""Postbacks share their Redis call and their transaction with the rest of their batch, and still
each get their own answer: concurrent postbacks of one merchant (new, retried, replayed, changed)
decided in one script call, and a batch of conversions processed in one transaction, in which one
that cannot be processed is set aside alone."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from app import webhooks
from app.services.intake import conversion_id
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import flush, make_advocate, make_program
from tests.test_conversions import RULES, good_and_broken_advocates


def _signed(merchant: CreatedMerchant, body: dict[str, Any], stamp: int) -> tuple[bytes, str]:
    raw = json.dumps(body).encode()
    return raw, webhooks.sign(merchant.webhook_secret, stamp, raw)


def _send(client: httpx.AsyncClient, merchant: CreatedMerchant, raw: bytes, signature: str) -> Any:
    return client.post("/v1/conversions", content=raw, headers={
        "content-type": "application/json", "x-referral-merchant": str(merchant.id),
        "x-referral-signature": signature})  # fmt: skip


async def test_concurrent_postbacks_share_batches_and_each_gets_its_own_answer(
    app: Any, client: httpx.AsyncClient, merchant: CreatedMerchant, redis: Any,
    settings: Settings, db: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # A Redis 100 ms away: the postbacks arriving meanwhile wait for the next call, together.
    admitter = app.api.state.runtime.conversion_buffer._admitter
    run = admitter.run
    batches: list[int] = []

    async def far_away(round_trip: Any, stream: str, events: list[bytes], *args: Any,
                       **kwargs: Any) -> Any:  # fmt: skip
        batches.append(len(events))
        await asyncio.sleep(0.1)
        return await run(round_trip, stream, events, *args, **kwargs)

    monkeypatch.setattr(admitter, "run", far_away)
    stamp = int(time.time())
    fresh = [_signed(merchant, {"event_id": f"new-{n}", "type": "signup"}, stamp)
             for n in range(60)]  # fmt: skip
    # The same event again, signed anew (a retry): the same id, "duplicate" or "accepted" once.
    retried = [_signed(merchant, {"event_id": f"new-{n}", "type": "signup"}, stamp + 1)
               for n in range(10)]  # fmt: skip
    # The very same request again (a replay of the signature): one 202, one 401.
    replayed = fresh[10:15]
    # The same event id with another body: 409 for whichever comes second.
    changed = [_signed(merchant, {"event_id": f"new-{n}", "type": "signup", "customer_id": "x"},
                       stamp + 2) for n in range(20, 25)]  # fmt: skip
    requests = [*fresh, *retried, *replayed, *changed]
    answers = await asyncio.gather(*(_send(client, merchant, raw, sig) for raw, sig in requests))

    by_event: dict[str, list[httpx.Response]] = {}
    for (raw, _), answer in zip(requests, answers, strict=True):
        by_event.setdefault(json.loads(raw)["event_id"], []).append(answer)
    for event_id, group in by_event.items():
        expected_id = str(conversion_id(merchant.id, event_id))
        statuses = sorted(a.status_code for a in group)
        accepted = [a for a in group if a.status_code == 202]
        assert all(a.json()["id"] == expected_id for a in accepted), event_id
        # Exactly one of them made it in, whatever the order inside the batch.
        assert sum(a.json()["status"] == "accepted" for a in accepted) <= 1
        n = int(event_id.split("-")[1])
        if 10 <= n < 15:
            assert statuses.count(401) == 1 and statuses.count(202) == 1, (event_id, statuses)
            [refused] = [a for a in group if a.status_code == 401]
            assert refused.json()["error"]["field"] == "x-referral-signature"
        elif 20 <= n < 25:
            assert statuses == [202, 409], (event_id, statuses)
            [conflict] = [a for a in group if a.status_code == 409]
            assert conflict.json()["error"]["field"] == "body.event_id"
        else:
            assert set(statuses) == {202}, (event_id, statuses)
            assert {a.json()["status"] for a in group} <= {"accepted", "duplicate"}
    # Batched: one Redis call per batch, far fewer than postbacks.
    assert sum(batches) == len(requests) and len(batches) <= len(requests) // 8, batches

    await flush(settings)
    assert await db.fetchval("SELECT count(*) FROM conversions") == 60


async def test_one_conversion_that_fails_inside_a_batch_is_set_aside_alone(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
) -> None:  # fmt: skip
    anna, ben, _ = await good_and_broken_advocates(client, merchant, db)
    stamp = int(time.time())
    bodies = [
        {"event_id": f"o-{n}", "type": "purchase", "order_id": f"{n}", "amount_minor": 5000,
         "currency": "EUR", "customer_id": f"c-{n}",
         "referral_code": (ben if n == 7 else anna)["referral_code"]}
        for n in range(15)
    ]  # fmt: skip
    answers = await asyncio.gather(
        *(_send(client, merchant, *_signed(merchant, body, stamp)) for body in bodies)
    )
    assert {a.status_code for a in answers} == {202}
    await flush(settings)

    stored = await db.fetch("SELECT event_id, state FROM conversions ORDER BY event_id")
    assert len(stored) == 14 and {r["state"] for r in stored} == {"attributed"}
    assert "o-7" not in {r["event_id"] for r in stored}
    [dead] = await db.fetch("SELECT payload, error FROM dead_letters")
    assert b'"o-7"' in dead["payload"] and "ProgramRules" in dead["error"]
    rewards = await db.fetchval("SELECT count(*) FROM rewards WHERE advocate_id = $1", anna["id"])
    assert rewards >= 14


async def test_a_redis_that_forgot_the_script_is_taught_it_again(
    client: httpx.AsyncClient, merchant: CreatedMerchant, redis: Any, settings: Settings
) -> None:
    first = await _send(client, merchant, *_signed(merchant, {"event_id": "a", "type": "signup"},
                                                   int(time.time())))  # fmt: skip
    await redis.script_flush()  # a restart without persistence of scripts, a failover
    again = await _send(client, merchant, *_signed(merchant, {"event_id": "a", "type": "signup"},
                                                   int(time.time()) + 1))  # fmt: skip
    assert first.json()["status"] == "accepted"
    assert again.json() == {"id": first.json()["id"], "status": "duplicate"}


async def test_lanes_process_a_batch_at_once_and_keep_each_orders_refund_after_it(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
) -> None:  # fmt: skip
    program = await make_program(client, merchant, rules=RULES)
    advocates = [await make_advocate(client, merchant, program, f"cust-{n}") for n in range(6)]
    stamp = int(time.time())
    bodies: list[dict[str, Any]] = []
    for n in range(40):
        code = advocates[n % 6]["referral_code"]
        bodies.append({"event_id": f"buy-{n}", "type": "purchase", "order_id": f"{n}",
                       "amount_minor": 10_000, "currency": "EUR", "customer_id": f"friend-{n}",
                       "referral_code": code})  # fmt: skip
        if n % 4 == 0:  # refunded in the same batch, right behind its order
            bodies.append({"event_id": f"refund-{n}", "type": "refund", "refund_of": f"{n}",
                           "amount_minor": 2_500, "currency": "EUR"})  # fmt: skip
    for body in bodies:  # in order: each refund enters the stream after its purchase
        answer = await _send(client, merchant, *_signed(merchant, body, stamp))
        assert answer.status_code == 202, answer.text
    await flush(settings.model_copy(update={"conversion_workers": 4}))

    states = dict(await db.fetch("SELECT event_id, state FROM conversions"))
    assert (
        len(states) == len(bodies) and await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    )
    reversed_total = await db.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM reward_entries WHERE to_state = 'reversed'"
    )
    # Each refund took a quarter of both sides' rewards (10.00 and 10 % of the order, capped).
    assert reversed_total == 10 * (250 + 250)


async def test_a_batch_reads_its_codes_once_yet_counts_each_conversion_after_the_one_before(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant,
    settings: Settings, db: asyncpg.Pool,
) -> None:  # fmt: skip
    # Two shops whose advocates hold the same code text: the batch's shared reads of code
    # owners are per merchant. And two first purchases of one customer in one batch: only the
    # first is rewarded (the counts are read per conversion, never kept for the batch).
    ours = await make_advocate(
        client, merchant, await make_program(client, merchant, rules=RULES), "anna"
    )
    theirs = await make_advocate(client, other_merchant, await make_program(
        client, other_merchant, rules=RULES), "olga")  # fmt: skip
    await db.execute("UPDATE advocates SET referral_code = $1 WHERE id = $2",
                     ours["referral_code"], theirs["id"])  # fmt: skip
    stamp = int(time.time())
    sends = []
    for shop in (merchant, other_merchant):
        for n in range(2):
            body = {"event_id": f"buy-{n}", "type": "purchase", "order_id": f"{n}",
                    "amount_minor": 10_000, "currency": "EUR", "customer_id": "friend",
                    "referral_code": ours["referral_code"]}  # fmt: skip
            sends.append(_send(client, shop, *_signed(shop, body, stamp)))
    assert {a.status_code for a in await asyncio.gather(*sends)} == {202}
    await flush(settings)

    rows = await db.fetch(
        "SELECT c.merchant_id, c.advocate_id, c.order_id, count(r.id) AS rewards"
        " FROM conversions c LEFT JOIN rewards r ON r.conversion_id = c.id"
        " GROUP BY c.id ORDER BY c.merchant_id, c.order_id"
    )
    by_shop = {(r["merchant_id"], r["order_id"]): (r["advocate_id"], r["rewards"]) for r in rows}
    for shop, advocate in ((merchant, ours), (other_merchant, theirs)):
        first, second = by_shop[(shop.id, "0")], by_shop[(shop.id, "1")]
        assert {first[0], second[0]} == {UUID(advocate["id"])}
        assert sorted((first[1], second[1])) == [0, 2]  # both sides once, for one of the two


async def test_every_stored_conversion_keeps_the_emails_prints_the_fraud_rules_compare(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
) -> None:  # fmt: skip
    # The self-referral and same-device rules (and their preview) compare a customer's email
    # prints with the advocate's: stored with the conversion, whichever way it was decided
    # (they were kept in the stream event only, and the columns stayed empty).
    anna = await make_advocate(
        client, merchant, await make_program(client, merchant, rules=RULES), "anna"
    )
    stamp = int(time.time())
    grouped_one = {"event_id": "by-code", "type": "signup", "customer_email": "Jo.Doe@x.org",
                   "referral_code": anna["referral_code"]}  # fmt: skip
    alone = {"event_id": "no-code", "type": "signup", "customer_email": "Jo.Doe@x.org"}
    for body in (grouped_one, alone):
        assert (await _send(client, merchant, *_signed(merchant, body, stamp))).status_code == 202
    await flush(settings)

    rows = await db.fetch(
        "SELECT event_id, customer_email_canonical, customer_email_near, state FROM conversions"
        " ORDER BY event_id"
    )
    assert [(r["event_id"], r["state"]) for r in rows] == [
        ("by-code", "attributed"), ("no-code", "unattributed")]  # fmt: skip
    assert rows[0]["customer_email_canonical"] == rows[1]["customer_email_canonical"] is not None
    assert rows[0]["customer_email_near"] == rows[1]["customer_email_near"] != []


async def _five_purchases_flushed(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, code: str
) -> None:
    """Five friends' purchases with the advocate's code, accepted, then one flusher batch."""
    stamp = int(time.time())
    for n in range(5):
        body = {"event_id": f"buy-{n}", "type": "purchase", "order_id": f"{n}",
                "amount_minor": 10_000, "currency": "EUR", "customer_id": f"friend-{n}",
                "referral_code": code}  # fmt: skip
        assert (await _send(client, merchant, *_signed(merchant, body, stamp))).status_code == 202
    await flush(settings)


async def test_a_group_that_fails_is_processed_one_by_one_and_counted(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from app import metrics
    from app.storage import rewards as rewards_repo

    anna = await make_advocate(
        client, merchant, await make_program(client, merchant, rules=RULES), "anna"
    )
    failing = rewards_repo.create_rewards

    async def refused_once(conn: asyncpg.Connection, rewards: list[Any]) -> None:
        monkeypatch.setattr(rewards_repo, "create_rewards", failing)
        raise ValueError("a value PostgreSQL refuses")  # not transient: not retried whole

    monkeypatch.setattr(rewards_repo, "create_rewards", refused_once)
    counted = metrics.conversions_processed.labels
    before = {p: counted(p)._value.get() for p in ("grouped", "single", "group_redone")}
    await _five_purchases_flushed(client, merchant, settings, anna["referral_code"])

    assert await db.fetchval("SELECT count(*) FROM conversions WHERE state = 'attributed'") == 5
    assert await db.fetchval("SELECT count(*) FROM rewards") == 10  # both sides of each
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
    after = {p: counted(p)._value.get() for p in before}
    assert after["group_redone"] - before["group_redone"] == 1
    assert after["single"] - before["single"] == 5
    assert after["grouped"] == before["grouped"]


async def test_a_group_that_finds_the_lock_table_full_is_processed_one_by_one(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # With many lanes and flushers on one PostgreSQL, groups' advisory locks can fill its lock
    # table ("out of shared memory", 53200, a transient class): retrying the batch whole would
    # fill it again; one by one, each conversion needs only its own few locks.
    from app.storage import conversions as conversions_repo

    anna = await make_advocate(
        client, merchant, await make_program(client, merchant, rules=RULES), "anna"
    )
    locking = conversions_repo.lock

    async def table_full_for_groups(conn: asyncpg.Connection, *keys: str) -> None:
        if len(keys) > 4:  # a group's locks, not one conversion's
            raise asyncpg.exceptions.OutOfMemoryError("out of shared memory")
        await locking(conn, *keys)

    monkeypatch.setattr(conversions_repo, "lock", table_full_for_groups)
    await _five_purchases_flushed(client, merchant, settings, anna["referral_code"])

    assert await db.fetchval("SELECT count(*) FROM conversions WHERE state = 'attributed'") == 5
    assert await db.fetchval("SELECT count(*) FROM rewards") == 10
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
