"""Recurring commissions and orders in another currency, end to end: renewals under each
recurring rule (lifetime, months — including one past its last month — payments, none), a
renewal refunded alone, and a purchase with and without the merchant's exchange rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import auth, flush, make_advocate, make_program
from tests.test_conversions import RULES, post, read

START = datetime.now(UTC) - timedelta(days=200)


async def subscribe(
    client: httpx.AsyncClient, merchant: CreatedMerchant, recurring: dict[str, Any]
) -> dict[str, Any]:
    rules = {**RULES, "friend_reward": None, "recurring": recurring,
             "advocate_reward": {"kind": "percent", "percent": "20"}}  # fmt: skip
    program = await make_program(client, merchant, rules=rules)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    await post(client, merchant, {
        "event_id": "first", "type": "purchase", "order_id": "inv-0", "amount_minor": 5000,
        "currency": "EUR", "customer_id": "friend", "subscription_id": "sub-1",
        "referral_code": anna["referral_code"], "occurred_at": START.isoformat()})  # fmt: skip
    return anna


async def renew(
    client: httpx.AsyncClient, merchant: CreatedMerchant, n: int, days: int,
    subscription: str = "sub-1",
) -> str:  # fmt: skip
    answer = await post(client, merchant, {
        "event_id": f"renewal-{subscription}-{n}", "type": "renewal", "order_id": f"inv-{n}",
        "amount_minor": 5000, "currency": "EUR", "customer_id": "friend",
        "subscription_id": subscription,
        "occurred_at": (START + timedelta(days=days)).isoformat()})  # fmt: skip
    assert answer.status_code == 202, answer.text
    conversion_id: str = answer.json()["id"]
    return conversion_id


def earned(conversion: dict[str, Any]) -> int | None:
    return conversion["rewards"][0]["amount_minor"] if conversion["rewards"] else None


@pytest.mark.parametrize(
    ("recurring", "days", "expected"),
    [
        # Lifetime, 5 % after the first purchase's 20 %: every renewal earns 2.50.
        ({"mode": "lifetime", "percent_after_first": "5"}, [30, 60, 190], [250, 250, 250]),
        # Two months: the renewals at 30 and 59 days earn, the one at 95 days is past it.
        ({"mode": "months", "months": 2}, [30, 59, 95], [1000, 1000, None]),
        # Two payments: the third renewal earns nothing.
        ({"mode": "payments", "payments": 2}, [30, 60, 90], [1000, 1000, None]),
        ({"mode": "none"}, [30], [None]),
    ],
)
async def test_renewals_earn_by_the_programs_recurring_rule(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings,
    recurring: dict[str, Any], days: list[int], expected: list[int | None],
) -> None:  # fmt: skip
    anna = await subscribe(client, merchant, recurring)
    await flush(settings)
    ids = [await renew(client, merchant, n, d) for n, d in enumerate(days, 1)]
    await flush(settings)
    found = [await read(client, merchant, i) for i in ids]
    assert [earned(f) for f in found] == expected
    for f in found:
        assert f["state"] == "attributed" and f["advocate_id"] == anna["id"]
        assert f["attribution_method"] == "subscription"
    if None in expected:
        reason = found[expected.index(None)]["reason"]
        assert any(words in reason for words in ("months", "renewals were already",
                                                 "does not reward renewals"))  # fmt: skip


async def test_a_renewal_without_its_first_purchase_is_not_credited(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    await subscribe(client, merchant, {"mode": "lifetime"})
    unknown = await renew(client, merchant, 1, 30, subscription="sub-unknown")
    await flush(settings)
    found = await read(client, merchant, unknown)
    assert found["state"] == "unattributed" and "sub-unknown" in found["reason"]


async def test_refunding_one_renewal_reverses_only_its_reward(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    await subscribe(client, merchant, {"mode": "lifetime"})
    first, second = await renew(client, merchant, 1, 30), await renew(client, merchant, 2, 60)
    await flush(settings)
    await post(client, merchant, {"event_id": "refund-2", "type": "refund", "refund_of": "inv-2"})
    await flush(settings)
    assert (await read(client, merchant, first))["rewards"][0]["state"] == "pending"
    assert (await read(client, merchant, second))["rewards"][0]["state"] == "reversed"


async def test_an_order_in_another_currency_earns_at_the_merchants_rate_of_its_day(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    rules = {**RULES, "reward_event": "every_purchase", "friend_reward": None,
             "advocate_reward": {"kind": "percent", "percent": "10"}}  # fmt: skip
    program = await make_program(client, merchant, rules=rules)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    body = {"type": "purchase", "amount_minor": 10_000, "currency": "USD",
            "customer_id": "friend", "referral_code": anna["referral_code"],
            "occurred_at": day.isoformat()}  # fmt: skip
    before = (await post(client, merchant, {**body, "event_id": "usd-1", "order_id": "u1"})).json()
    await flush(settings)
    no_rate = await read(client, merchant, before["id"])
    assert no_rate["rewards"] == [] and "no exchange rate" in no_rate["reason"]
    put = await client.put("/v1/exchange-rates", json={"rates": [
        {"base": "USD", "quote": "EUR", "day": day.date().isoformat(), "rate": "0.9234"}]},
        headers=auth(merchant))  # fmt: skip
    assert put.status_code == 204, put.text
    after = (await post(client, merchant, {**body, "event_id": "usd-2", "order_id": "u2"})).json()
    await flush(settings)
    found = await read(client, merchant, after["id"])
    # 100.00 USD at 0.9234 = 92.34 EUR; 10 % = 9.23 EUR, rounded down.
    assert [(r["amount_minor"], r["currency"]) for r in found["rewards"]] == [(923, "EUR")]
    stored = await db.fetchrow("SELECT fx_rate, order_currency, order_amount_minor FROM rewards")
    assert (str(stored["fx_rate"]), stored["order_currency"], stored["order_amount_minor"]) == (
        "0.9234", "USD", 10_000)  # fmt: skip
    rates = (await client.get("/v1/exchange-rates", headers=auth(merchant))).json()
    assert rates == [{"base": "USD", "quote": "EUR", "day": day.date().isoformat(),
                      "rate": "0.9234"}]  # fmt: skip
