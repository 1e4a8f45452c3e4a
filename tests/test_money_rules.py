"""Money rules and races: an anonymous pixel never moves credit, refunds are matched and capped,
"first purchase" is never guessed, and every ledger move is made once however many schedulers
and flushers run. Races are forced (a transaction held open while the other runs), not hoped for.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from app.pipeline.events import ConversionEvent
from app.schemas import ConversionIn
from app.security import IpAnonymizer
from app.services import intake
from app.services.processing import process
from app.services.rewards import approve_due
from app.settings import Settings
from app.storage import rewards as rewards_repo
from app.storage.merchants import CreatedMerchant
from tests.conftest import auth, flush, make_advocate, make_program
from tests.test_conversions import RULES, click, post, read

NO_HOLD = {**RULES, "hold_days": 0}


@pytest.fixture
async def referral(client: httpx.AsyncClient, merchant: CreatedMerchant) -> dict[str, Any]:
    program = await make_program(client, merchant, rules=NO_HOLD)
    advocate = await make_advocate(client, merchant, program, "cust-anna")
    return {"program": program, "advocate": advocate, "link": advocate["links"][0]}


async def pixel(client: httpx.AsyncClient, merchant: CreatedMerchant, order: str, **q: Any) -> None:
    params = {"m": str(merchant.id), "order_id": order, **q}
    assert (await client.get("/t/pixel.gif", params=params)).status_code == 200


def purchase(order: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"o-{order}", "type": "purchase", "order_id": order,
            "amount_minor": 10_000, "currency": "EUR", **fields}  # fmt: skip


# -- The anonymous pixel --------------------------------------------------------------------


async def test_a_pixel_claim_made_before_the_order_existed_moves_no_credit(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    await click(client, referral["link"])  # the attacker's own browser, with our cookie
    await pixel(client, merchant, "1001")  # claims an order that does not exist yet
    await flush(settings)
    later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    answer = await post(client, merchant, purchase("1001", customer_id="c1", occurred_at=later))
    await flush(settings)
    outcome = await read(client, merchant, answer.json()["id"])
    assert outcome["state"] == "unattributed" and outcome["rewards"] == []
    assert "before it was placed" in outcome["reason"]


async def test_an_order_claimed_by_two_browsers_is_no_evidence(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    await click(client, referral["link"])
    await pixel(client, merchant, "1002")
    client.cookies.clear()
    await click(client, referral["link"])  # another browser
    await pixel(client, merchant, "1002")
    await flush(settings)
    unverified = await db.fetchrow("SELECT state, reason FROM conversions WHERE NOT verified")
    assert unverified["state"] == "unattributed" and "2 browsers" in unverified["reason"]
    answer = await post(client, merchant, purchase("1002", customer_id="c1"))
    await flush(settings)
    outcome = await read(client, merchant, answer.json()["id"])
    assert outcome["state"] == "unattributed" and "2 browsers" in outcome["reason"]


async def test_the_postbacks_own_evidence_beats_the_pixel(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    ben = await make_advocate(client, merchant, referral["program"], "cust-ben")
    await click(client, referral["link"])  # Anna's link, then the pixel in this browser
    await pixel(client, merchant, "1003")
    client.cookies.clear()
    ben_click = await click(client, ben["links"][0])
    answer = await post(client, merchant, purchase("1003", customer_id="c1", click_id=ben_click))
    await flush(settings)
    outcome = await read(client, merchant, answer.json()["id"])
    assert outcome["advocate_id"] == ben["id"] and outcome["attribution_method"] == "click_id"


async def test_unverified_pixel_orders_are_shown_apart_never_as_purchases_or_revenue(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    await click(client, referral["link"])
    await pixel(client, merchant, "1004", amount_minor=777_777_700, currency="EUR")
    await flush(settings)
    stats = await client.get(
        f"/v1/programs/{referral['program']['id']}/stats", headers=auth(merchant)
    )
    body = stats.json()
    assert (body["purchases"], body["revenue_minor"], body["unverified_orders"]) == (0, {}, 1)


async def test_a_refund_after_a_pixel_waits_for_the_signed_purchase(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    await click(client, referral["link"])
    await pixel(client, merchant, "1005", amount_minor=10_000, currency="EUR")
    refund = {"event_id": "r-1005", "type": "refund", "refund_of": "1005", "amount_minor": 2_500,
              "currency": "EUR"}  # fmt: skip
    refund_id = (await post(client, merchant, refund)).json()["id"]
    await flush(settings)
    assert (await read(client, merchant, refund_id))["state"] == "refund_unmatched"

    # The refund arrived before its purchase: applied as soon as the purchase is.
    code = referral["advocate"]["referral_code"]
    bought = await post(client, merchant, purchase("1005", customer_id="c1", referral_code=code))
    await flush(settings)
    assert (await read(client, merchant, refund_id))["state"] == "refunded"
    rewards = (await read(client, merchant, bought.json()["id"]))["rewards"]
    assert sum(r["balances"]["reversed"] for r in rewards) == (1000 + 1000) // 4


# -- Refunds, capped -------------------------------------------------------------------------


async def test_refunds_never_exceed_the_order_and_the_excess_is_refused_with_a_reason(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    code = referral["advocate"]["referral_code"]
    bought = await post(client, merchant, purchase("2001", customer_id="c1", referral_code=code))
    first = await post(client, merchant, {
        "event_id": "r1", "type": "refund", "refund_of": "2001", "amount_minor": 7_000,
        "currency": "EUR"})  # fmt: skip
    second = await post(client, merchant, {
        "event_id": "r2", "type": "refund", "refund_of": "2001", "amount_minor": 9_000,
        "currency": "EUR"})  # fmt: skip
    third = await post(client, merchant, {"event_id": "r3", "type": "refund", "refund_of": "2001"})
    await flush(settings)
    r1, r2, r3 = [await read(client, merchant, a.json()["id"]) for a in (first, second, third)]
    assert (r1["state"], r1["amount_minor"]) == ("refunded", 7_000)
    assert (r2["state"], r2["amount_minor"]) == ("refunded", 3_000)
    assert "6000 refused" in r2["reason"]
    assert r3["state"] == "refund_refused" and "already refunded in full" in r3["reason"]
    rewards = (await read(client, merchant, bought.json()["id"]))["rewards"]
    assert all(r["balances"]["reversed"] == r["amount_minor"] for r in rewards)
    stats = await client.get(
        f"/v1/programs/{referral['program']['id']}/stats", headers=auth(merchant)
    )
    assert stats.json()["revenue_minor"] == {"EUR": 0}


async def test_first_purchase_without_a_customer_identity_is_a_stated_no_reward(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    code = referral["advocate"]["referral_code"]
    answers = [await post(client, merchant, purchase(str(n), referral_code=code)) for n in (1, 2)]
    await flush(settings)
    for answer in answers:
        outcome = await read(client, merchant, answer.json()["id"])
        assert outcome["rewards"] == [] and "names no customer" in outcome["reason"]


# -- Races, forced ---------------------------------------------------------------------------


async def _event(merchant: CreatedMerchant, **fields: Any) -> ConversionEvent:
    body = ConversionIn.model_validate(fields)
    return intake.conversion_event(
        merchant.id, b"k" * 32, body, IpAnonymizer(b"k" * 16), datetime.now(UTC)
    )


async def _blocked(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(0.3)
    return not task.done()


async def test_two_flushers_cannot_both_reward_a_customers_first_purchase(
    merchant: CreatedMerchant, referral: dict, db: asyncpg.Pool
) -> None:
    code = referral["advocate"]["referral_code"]
    first = await _event(merchant, **purchase("3001", customer_id="c1", referral_code=code))
    second = await _event(merchant, **purchase("3002", customer_id="c1", referral_code=code))
    async with db.acquire() as one, db.acquire() as two:
        held = one.transaction()
        await held.start()
        await process(one, first)  # flusher 1, not committed yet

        async def flusher_two() -> None:
            async with two.transaction():
                await process(two, second)

        racing = asyncio.create_task(flusher_two())
        assert await _blocked(racing)  # waits on the customer, instead of counting alone
        await held.commit()
        await racing
    rewarded = await db.fetchval("SELECT count(DISTINCT conversion_id) FROM rewards")
    assert rewarded == 1


async def test_a_refund_processed_beside_its_purchase_is_still_matched(
    merchant: CreatedMerchant, referral: dict, db: asyncpg.Pool
) -> None:
    code = referral["advocate"]["referral_code"]
    refund = await _event(merchant, event_id="r-4001", type="refund", refund_of="4001")
    bought = await _event(merchant, **purchase("4001", customer_id="c1", referral_code=code))
    async with db.acquire() as one, db.acquire() as two:
        held = one.transaction()
        await held.start()
        await process(one, refund)  # finds no purchase yet

        async def flusher_two() -> None:
            async with two.transaction():
                await process(two, bought)

        racing = asyncio.create_task(flusher_two())
        assert await _blocked(racing)  # the order is decided one conversion at a time
        await held.commit()
        await racing
    state = await db.fetchval("SELECT state FROM conversions WHERE type = 'refund'")
    assert state == "refunded"
    reversed_total = await db.fetchval(
        "SELECT sum(amount_minor) FROM reward_entries WHERE to_state = 'reversed'"
    )
    assert reversed_total == 1000 + 1000  # a full refund takes both rewards back


async def _rewarded_purchase(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    order: str,
) -> list[UUID]:  # fmt: skip
    """A purchase through the advocate's code, processed: the ids of its two rewards."""
    code = referral["advocate"]["referral_code"]
    answer = await post(client, merchant, purchase(order, customer_id="c1", referral_code=code))
    await flush(settings)
    return [UUID(r["id"]) for r in (await read(client, merchant, answer.json()["id"]))["rewards"]]


async def test_two_schedulers_never_approve_the_same_amount_twice(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    code = referral["advocate"]["referral_code"]
    await post(client, merchant, purchase("5001", customer_id="c1", referral_code=code))
    await flush(settings)
    now = datetime.now(UTC) + timedelta(seconds=1)
    async with db.acquire() as one:
        held = one.transaction()
        await held.start()
        due = await rewards_repo.lock_due(one, now, 100)  # scheduler 1, mid-approval
        assert await rewards_repo.approve_pending(one, due) == 2
        racing = asyncio.create_task(approve_due(db, now))  # scheduler 2 on another replica
        assert await _blocked(racing)
        await held.commit()
        assert await racing == 0
    approved = await db.fetchval(
        "SELECT sum(amount_minor) FROM reward_entries WHERE to_state = 'approved'"
    )
    assert approved == 1000 + 1000


async def test_a_reward_rejected_while_approval_waits_is_not_approved(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    reward_ids = await _rewarded_purchase(client, merchant, referral, settings, "6001")
    async with db.acquire() as one:
        held = one.transaction()
        await held.start()
        await one.execute("SELECT 1 FROM rewards WHERE id = ANY($1::uuid[]) FOR UPDATE", reward_ids)
        for reward_id in reward_ids:  # a person rejects both, in one transaction
            await one.execute(
                "INSERT INTO reward_entries (reward_id, merchant_id, from_state, to_state,"
                " amount_minor, reason) VALUES ($1, $2, 'pending', 'rejected', 1000, 'fraud')",
                reward_id, merchant.id,
            )  # fmt: skip
        racing = asyncio.create_task(approve_due(db, datetime.now(UTC) + timedelta(seconds=1)))
        assert await _blocked(racing)
        await held.commit()
        assert await racing == 0
    balances = await rewards_repo.balances(db, reward_ids)
    assert all(b["approved"] == 0 and b["rejected"] == 1000 for b in balances.values())


async def test_a_refund_reversal_waits_for_a_move_in_flight_and_reads_after_it(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    reward_ids = await _rewarded_purchase(client, merchant, referral, settings, "7001")
    refund = await _event(merchant, event_id="r-7001", type="refund", refund_of="7001")
    async with db.acquire() as one, db.acquire() as two:
        held = one.transaction()
        await held.start()
        due = await rewards_repo.lock_due(one, datetime.now(UTC) + timedelta(seconds=1), 100)
        await rewards_repo.approve_pending(one, due)  # approval in flight

        async def flusher() -> None:
            async with two.transaction():
                await process(two, refund)

        racing = asyncio.create_task(flusher())
        assert await _blocked(racing)
        await held.commit()
        await racing
    balances = await rewards_repo.balances(db, reward_ids)
    for b in balances.values():  # reversed from approved, where the money was: nothing negative
        assert b == {"pending": 0, "held": 0, "approved": 0, "reserved": 0, "paid": 0,
                     "reversed": 1000, "rejected": 0}  # fmt: skip
