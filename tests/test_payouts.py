"""Payout batches end to end: a month of conversions and approvals, a batch with its skipped
balances, the same Idempotency-Key twice, two batches at once, each export parsed back and its
totals compared with the ledger, a failed line returned to approved, and a refund after payout
netted in the next batch (never a negative line)."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import asyncpg
import httpx
import pytest

from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from app.workers import scheduler
from tests.conftest import auth, flush, make_program
from tests.test_conversions import RULES, post

PAYOUT_RULES = {**RULES, "hold_days": 0, "reward_event": "every_purchase",
                "min_payout_minor": 1500, "friend_reward": None}  # fmt: skip


async def advocate(
    client: httpx.AsyncClient, merchant: CreatedMerchant, program: dict[str, Any], name: str,
    email: str | None,
) -> dict[str, Any]:  # fmt: skip
    response = await client.post(
        f"/v1/programs/{program['id']}/advocates", json={"external_id": f"cust-{name}",
                                                        "name": name.title()},
        headers=auth(merchant),
    )  # fmt: skip
    found: dict[str, Any] = response.json()
    if email:
        details = await client.put(f"/v1/advocates/{found['id']}/payout-details",
                                   json={"payout_email": email, "payout_name": name.title()},
                                   headers=auth(merchant))  # fmt: skip
        assert details.status_code == 204, details.text
    return found


async def purchases(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings,
    orders: list[tuple[dict[str, Any], str]],
) -> None:  # fmt: skip
    """Each (advocate, order id) a purchase of 50.00 by code, processed and approved."""
    for adv, order in orders:
        response = await post(client, merchant, {
            "event_id": order, "type": "purchase", "order_id": order, "amount_minor": 5000,
            "currency": "EUR", "customer_id": f"friend-{order}",
            "referral_code": adv["referral_code"]})  # fmt: skip
        assert response.status_code == 202
    await flush(settings)
    await scheduler.run(settings, once=True)


async def batch(
    client: httpx.AsyncClient, merchant: CreatedMerchant, key: str, **body: Any
) -> httpx.Response:
    return await client.post("/v1/payouts", json=body,
                             headers={**auth(merchant), "Idempotency-Key": key})  # fmt: skip


async def ledger(db: asyncpg.Pool, state: str) -> int:
    total = await db.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM reward_balances WHERE state = $1", state
    )
    return int(total)


async def test_a_month_end_batch_pays_what_is_approved_and_its_exports_match_the_ledger(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules=PAYOUT_RULES)
    anna = await advocate(client, merchant, program, "anna", "anna@paypal.example")
    ben = await advocate(client, merchant, program, "ben", "ben@paypal.example")
    cleo = await advocate(client, merchant, program, "cleo", None)
    await purchases(client, merchant, settings, [(anna, "a1"), (anna, "a2"), (ben, "b1"),
                                                 (cleo, "c1"), (cleo, "c2")])  # fmt: skip
    assert await ledger(db, "approved") == 5000

    created = await batch(client, merchant, "2026-11")
    assert created.status_code == 201, created.text
    payout = created.json()
    assert [(line["external_id"], line["amount_minor"]) for line in payout["lines"]] == [
        ("cust-anna", 2000)
    ]
    reasons = {s["advocate_id"]: s["reason"] for s in payout["skipped"]}
    assert "below the minimum payout of 15.00" in reasons[ben["id"]]
    assert "no payout details" in reasons[cleo["id"]]  # reported, not silently dropped
    assert await ledger(db, "reserved") == 2000 and await ledger(db, "approved") == 3000
    # The same key answers the same batch; another request under it is refused.
    again = await batch(client, merchant, "2026-11")
    assert again.status_code == 200 and again.json()["id"] == payout["id"]
    assert (await batch(client, merchant, "2026-11", program_id=program["id"])).status_code == 409

    url = f"/v1/payouts/{payout['id']}/export"
    paypal = await client.get(url, params={"format": "paypal"}, headers=auth(merchant))
    rows = list(csv.reader(io.StringIO(paypal.text)))
    assert rows == [["anna@paypal.example", "20.00", "EUR", "cust-anna",
                     f"Referral rewards (payout {payout['id'][:8]})", "PAYPAL"]]  # fmt: skip
    wise = await client.get(url, params={"format": "wise"}, headers=auth(merchant))
    [wise_row] = list(csv.DictReader(io.StringIO(wise.text)))
    assert (wise_row["recipientEmail"], wise_row["amount"], wise_row["targetCurrency"],
            wise_row["type"]) == ("anna@paypal.example", "20.00", "EUR", "EMAIL")  # fmt: skip
    plain = await client.get(url, headers=auth(merchant))
    [line] = list(csv.DictReader(io.StringIO(plain.text)))
    assert line["amount"] == "20.00" and len(line["reward_ids"].split()) == 2
    exported = sum(int(line["amount"].replace(".", "")) for line in [line])
    assert exported == await ledger(db, "reserved")

    sent = await client.post(f"/v1/payouts/{payout['id']}/sent", headers=auth(merchant))
    assert sent.json()["status"] == "sent"
    done = await client.post(f"/v1/payouts/{payout['id']}/complete", json={},
                             headers=auth(merchant))  # fmt: skip
    assert done.json()["status"] == "completed"
    assert await ledger(db, "paid") == 2000 and await ledger(db, "reserved") == 0
    # Idempotent; a completed batch cannot fail.
    assert (await client.post(f"/v1/payouts/{payout['id']}/complete", json={},
                              headers=auth(merchant))).status_code == 200  # fmt: skip
    assert (await client.post(f"/v1/payouts/{payout['id']}/fail", json={"reason": "x"},
                              headers=auth(merchant))).status_code == 409  # fmt: skip
    listed = (await client.get("/v1/payouts", headers=auth(merchant))).json()
    assert [b["id"] for b in listed] == [payout["id"]]


async def test_two_batches_created_at_once_never_hold_the_same_amount(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules={**PAYOUT_RULES, "min_payout_minor": 0})
    people = [await advocate(client, merchant, program, f"p{n}", f"p{n}@x.example")
              for n in range(6)]  # fmt: skip
    await purchases(client, merchant, settings, [(p, f"o{n}") for n, p in enumerate(people)])
    first, second = await asyncio.gather(
        batch(client, merchant, "k1"), batch(client, merchant, "k2")
    )
    lines = first.json()["lines"] + second.json()["lines"]
    rewards = [r for line in lines for r in line["reward_ids"]]
    assert len(rewards) == len(set(rewards)) == 6  # each reward in exactly one batch
    assert await ledger(db, "reserved") == 6000 and await ledger(db, "approved") == 0


async def test_a_failed_line_returns_to_approved_and_the_next_batch_pays_it(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules={**PAYOUT_RULES, "min_payout_minor": 0})
    anna = await advocate(client, merchant, program, "anna", "anna@x.example")
    ben = await advocate(client, merchant, program, "ben", "ben@x.example")
    await purchases(client, merchant, settings, [(anna, "a1"), (ben, "b1")])
    payout = (await batch(client, merchant, "k1")).json()
    ben_line = next(line for line in payout["lines"] if line["advocate_id"] == ben["id"])
    done = await client.post(
        f"/v1/payouts/{payout['id']}/complete",
        json={"failed_lines": [{"line_id": ben_line["id"], "reason": "account closed"}]},
        headers=auth(merchant),
    )  # fmt: skip
    statuses = {line["advocate_id"]: (line["status"], line["failure"])
                for line in done.json()["lines"]}  # fmt: skip
    assert statuses == {anna["id"]: ("completed", None), ben["id"]: ("failed", "account closed")}
    assert done.json()["totals_minor"] == {"EUR": 1000}
    assert await ledger(db, "paid") == 1000 and await ledger(db, "approved") == 1000
    retry = (await batch(client, merchant, "k2")).json()
    assert [line["advocate_id"] for line in retry["lines"]] == [ben["id"]]
    failed = await client.post(f"/v1/payouts/{retry['id']}/fail", json={"reason": "bank down"},
                               headers=auth(merchant))  # fmt: skip
    assert failed.json()["status"] == "failed" and await ledger(db, "approved") == 1000


async def test_a_refund_after_payout_is_netted_in_the_next_batch_never_a_negative_line(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules={**PAYOUT_RULES, "min_payout_minor": 0})
    anna = await advocate(client, merchant, program, "anna", "anna@x.example")
    await purchases(client, merchant, settings, [(anna, "a1")])
    first = (await batch(client, merchant, "k1")).json()
    await client.post(f"/v1/payouts/{first['id']}/complete", json={}, headers=auth(merchant))
    # The paid order is refunded: 10.00 clawed back, owed by Anna.
    await post(client, merchant, {"event_id": "r1", "type": "refund", "refund_of": "a1"})
    await flush(settings)
    assert await ledger(db, "paid") == 0
    assert await db.fetchval("SELECT sum(amount_minor) FROM advocate_owed") == 1000
    # One new approved reward of 10.00 does not cover the debt: no line, the reason stated.
    await purchases(client, merchant, settings, [(anna, "a2")])
    carried = (await batch(client, merchant, "k2")).json()
    assert carried["lines"] == [] and "owes 10.00" in carried["skipped"][0]["reason"]
    # Two more: 30.00 approved, 10.00 netted, 20.00 sent.
    await purchases(client, merchant, settings, [(anna, "a3"), (anna, "a4")])
    netted = (await batch(client, merchant, "k3")).json()
    [line] = netted["lines"]
    assert (line["gross_minor"], line["clawback_minor"], line["amount_minor"]) == (3000, 1000, 2000)
    await client.post(f"/v1/payouts/{netted['id']}/complete", json={}, headers=auth(merchant))
    owed = await db.fetchval("SELECT sum(amount_minor) FROM advocate_owed")
    sent = await db.fetchval(
        "SELECT sum(amount_minor) FROM payout_lines WHERE status = 'completed'"
    )
    assert owed == 0 and sent == 1000 + 2000
    # What was sent is what is paid in the ledger plus what is still owed.
    assert await ledger(db, "paid") + owed == sent


async def test_a_batch_broken_off_midway_reserves_nothing_and_its_retry_creates_it(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The database connection is lost after the first line is written: the whole batch rolls
    back (nothing reserved, no batch under the key), and the retry with the same key pays all."""
    from app.storage import payouts as payouts_repo

    program = await make_program(client, merchant, rules={**PAYOUT_RULES, "min_payout_minor": 0})
    people = [await advocate(client, merchant, program, f"p{n}", f"p{n}@x.example")
              for n in range(3)]  # fmt: skip
    await purchases(client, merchant, settings, [(p, f"o{n}") for n, p in enumerate(people)])
    real, written = payouts_repo.insert_line, []

    async def breaks_after_one(*args: Any) -> Any:
        if written:
            raise asyncpg.PostgresConnectionError("connection lost mid-batch")
        written.append(await real(*args))
        return written[-1]

    monkeypatch.setattr(payouts_repo, "insert_line", breaks_after_one)
    broken = await batch(client, merchant, "k1")
    assert broken.status_code == 503  # retry later, with the same key
    assert await db.fetchval("SELECT count(*) FROM payout_batches") == 0
    assert await ledger(db, "reserved") == 0 and await ledger(db, "approved") == 3000
    monkeypatch.setattr(payouts_repo, "insert_line", real)
    retried = await batch(client, merchant, "k1")
    assert retried.status_code == 201 and len(retried.json()["lines"]) == 3
    assert await ledger(db, "reserved") == 3000
