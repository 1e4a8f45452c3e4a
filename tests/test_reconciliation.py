"""Reconciliation end to end: the shop's orders of a period against ours finds each of the four
kinds of difference (with the evidence we hold), applying the report reverses through the ledger
what the shop no longer supports, and applying it twice changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import auth, flush, make_advocate, make_program
from tests.test_conversions import RULES, click, post

RECONCILED = {**RULES, "reward_event": "every_purchase", "hold_days": 0,
              "friend_reward": {"kind": "fixed", "amount_minor": 500}}  # fmt: skip
PERIOD = {"period_start": (datetime.now(UTC) - timedelta(days=30)).isoformat(),
          "period_end": (datetime.now(UTC) + timedelta(days=1)).isoformat()}  # fmt: skip


async def upload(
    client: httpx.AsyncClient, merchant: CreatedMerchant, body: str, content_type: str
) -> httpx.Response:
    return await client.post("/v1/reconciliation-reports", params=PERIOD, content=body.encode(),
                             headers={**auth(merchant), "content-type": content_type})  # fmt: skip


async def test_a_reconciliation_finds_each_kind_of_difference_and_applies_once(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules=RECONCILED)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    for order, amount in (("o1", 5000), ("o2", 5000), ("o3", 8000), ("o4", 5000)):
        await post(client, merchant, {
            "event_id": order, "type": "purchase", "order_id": order, "amount_minor": amount,
            "currency": "EUR", "customer_id": f"friend-{order}",
            "referral_code": anna["referral_code"]})  # fmt: skip
    lost_click = await click(client, anna["links"][0])  # its postback never reached us
    await flush(settings)
    shop = "\n".join([
        "order_id,status,amount,currency,customer_id,click_id",
        "o1,paid,50.00,EUR,friend-o1,",
        "o2,cancelled,50.00,EUR,friend-o2,",
        "o3,paid,60.00,EUR,friend-o3,",
        f"o5,paid,30.00,EUR,friend-o5,{lost_click}",
    ])  # fmt: skip
    answer = await upload(client, merchant, shop, "text/csv")
    assert answer.status_code == 201, answer.text
    report = answer.json()
    assert report["orders"] == 4
    assert report["counts"] == {"rewarded_but_cancelled": 1, "amount_differs": 1,
                                "missing_here": 1, "missing_there": 1}  # fmt: skip
    kinds = {d["kind"]: d for d in report["differences"]}
    assert kinds["rewarded_but_cancelled"]["order_id"] == "o2"
    assert (kinds["amount_differs"]["ours_minor"], kinds["amount_differs"]["theirs_minor"]) == (
        8000, 6000)  # fmt: skip
    assert kinds["missing_here"]["order_id"] == "o5"
    assert f"our click on advocate {anna['id']}" in kinds["missing_here"]["detail"]
    assert kinds["missing_there"]["order_id"] == "o4"
    listed = (await client.get("/v1/reconciliation-reports", headers=auth(merchant))).json()
    assert [r["id"] for r in listed] == [report["id"]]

    url = f"/v1/reconciliation-reports/{report['id']}/apply"
    applied = (await client.post(url, headers=auth(merchant))).json()
    # o2: everything (10.00 + 5.00); o3: a quarter of each reward (2.50 + 1.25).
    assert {a["order_id"]: a["reversed_minor"] for a in applied["applied"]} == {
        "o2": 1500,
        "o3": 375,
    }
    reasons = await db.fetch(
        "SELECT DISTINCT reason FROM reward_entries WHERE to_state = 'reversed'"
    )
    assert all(f"reconciliation report {report['id']}" in r["reason"] for r in reasons)
    entries = await db.fetchval("SELECT count(*) FROM reward_entries")
    again = (await client.post(url, headers=auth(merchant))).json()
    assert again["applied_at"] == applied["applied_at"] and again["applied"] == applied["applied"]
    assert await db.fetchval("SELECT count(*) FROM reward_entries") == entries


async def test_json_lines_are_read_and_a_bad_line_is_named(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    good = '{"order_id": "x1", "status": "paid", "amount_minor": 5000, "currency": "EUR"}\n'
    answer = await upload(client, merchant, good, "application/x-ndjson")
    assert answer.status_code == 201 and answer.json()["counts"]["missing_here"] == 1
    bad = good + '{"order_id": "x2", "status": "lost", "amount": "1.5", "currency": "EUR"}\n'
    refused = await upload(client, merchant, bad, "application/x-ndjson")
    assert refused.status_code == 422 and "line 2" in refused.json()["error"]["message"]
    cents = "order_id,status,amount,currency\nx3,paid,1.005,EUR\n"
    refused = await upload(client, merchant, cents, "text/csv")
    assert (
        refused.status_code == 422
        and "more decimals than EUR" in refused.json()["error"]["message"]
    )


async def test_another_merchants_report_is_not_found(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant
) -> None:
    report = (
        await upload(client, merchant, "order_id,status,amount,currency\n", "text/csv")
    ).json()
    for path in (f"/v1/reconciliation-reports/{report['id']}",):
        assert (await client.get(path, headers=auth(other_merchant))).status_code == 404
    applied = await client.post(f"/v1/reconciliation-reports/{report['id']}/apply",
                                headers=auth(other_merchant))  # fmt: skip
    assert applied.status_code == 404


async def test_a_file_that_is_not_csv_is_a_422_naming_the_line(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    # Found by the fuzzer: a lone carriage return, and a NUL, were a 500.
    period = {"period_start": "2026-01-01T00:00:00Z", "period_end": "2026-02-01T00:00:00Z"}
    for body in (
        b"x#\xc2\xb3]\r-`\xc2\x98h",
        b"order_id,status,amount,currency\no1,paid\x00,1,EUR\n",
    ):
        response = await client.post(
            "/v1/reconciliation-reports", content=body, params=period,
            headers={**auth(merchant), "content-type": "text/csv"},
        )  # fmt: skip
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "body"
