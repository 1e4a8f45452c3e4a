"""Conversions end to end: signed postbacks, attribution, double-sided rewards, refunds, holds."""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from app import webhooks
from app.services import dead_letters
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from app.workers import scheduler
from tests.conftest import BROWSER_UA, auth, flush, make_advocate, make_program

RULES = {
    "attribution_window_days": 30,
    "reward_event": "first_purchase",
    "hold_days": 14,
    "currency": "EUR",
    "advocate_reward": {"kind": "fixed", "amount_minor": 1000},
    "friend_reward": {"kind": "percent", "percent": "10", "cap_minor": 2000},
}


async def post(
    client: httpx.AsyncClient,
    merchant: CreatedMerchant,
    body: dict[str, Any] | bytes,
    *,
    timestamp: int | None = None,
    secret: str | None = None,
    signature: str | None = None,
) -> httpx.Response:
    # json, not orjson: hostile tests send integers beyond 64 bits, which orjson refuses.
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    stamp = int(time.time()) if timestamp is None else timestamp
    header = signature or webhooks.sign(secret or merchant.webhook_secret, stamp, raw)
    return await client.post(
        "/v1/conversions",
        content=raw,
        headers={
            "content-type": "application/json",
            "x-referral-merchant": str(merchant.id),
            "x-referral-signature": header.encode(),  # bytes: hostile tests send non-ASCII
        },
    )


async def click(client: httpx.AsyncClient, link: dict[str, Any]) -> str:
    response = await client.get(f"/r/{link['code']}", headers={"user-agent": BROWSER_UA})
    return response.headers["location"].split("rcid=")[1][:32]


async def read(client: httpx.AsyncClient, merchant: CreatedMerchant, cid: str) -> dict[str, Any]:
    response = await client.get(f"/v1/conversions/{cid}", headers=auth(merchant))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def referral(client: httpx.AsyncClient, merchant: CreatedMerchant) -> dict[str, Any]:
    program = await make_program(client, merchant, rules=RULES)
    advocate = await make_advocate(client, merchant, program, "cust-anna")
    return {"program": program, "advocate": advocate, "link": advocate["links"][0]}


async def test_a_whole_referral_click_signup_purchase_partial_refund(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    click_id = await click(client, referral["link"])
    friend = {"customer_id": "cust-ben", "customer_email": "Ben@Example.com", "click_id": click_id}

    signup = await post(client, merchant, {"event_id": "su-1", "type": "signup", **friend})
    purchase = await post(client, merchant, {
        "event_id": "order-1001", "type": "purchase", "order_id": "1001",
        "amount_minor": 12_000, "currency": "EUR", **friend})  # fmt: skip
    assert signup.status_code == purchase.status_code == 202, purchase.text
    await flush(settings)

    signed_up = await read(client, merchant, signup.json()["id"])
    assert signed_up["state"] == "attributed"
    assert signed_up["attribution_method"] == "click_id"
    assert "no reward" in signed_up["reason"] and signed_up["rewards"] == []

    bought = await read(client, merchant, purchase.json()["id"])
    assert bought["advocate_id"] == referral["advocate"]["id"]
    assert bought["attributed_click_id"].replace("-", "") == click_id
    assert bought["rules_version"] == 1
    rewards = {r["beneficiary"]: r for r in bought["rewards"]}
    assert rewards["advocate"]["amount_minor"] == 1000
    assert rewards["friend"]["amount_minor"] == 1200  # 10 % of 120.00
    assert {r["state"] for r in rewards.values()} == {"pending"}

    refund = await post(client, merchant, {
        "event_id": "refund-1", "type": "refund", "refund_of": "1001",
        "amount_minor": 3_000, "currency": "EUR"})  # fmt: skip
    await flush(settings)
    refunded = await read(client, merchant, refund.json()["id"])
    assert refunded["state"] == "refunded"
    after = {r["beneficiary"]: r for r in (await read(client, merchant, bought["id"]))["rewards"]}
    assert after["advocate"]["balances"]["reversed"] == 250  # a quarter of the order refunded
    assert after["advocate"]["balances"]["pending"] == 750
    assert after["friend"]["balances"]["reversed"] == 300

    rest = await post(
        client, merchant, {"event_id": "refund-2", "type": "refund", "refund_of": "1001"}
    )
    await flush(settings)
    final = {r["beneficiary"]: r for r in (await read(client, merchant, bought["id"]))["rewards"]}
    assert final["advocate"]["state"] == "reversed"
    assert final["advocate"]["balances"]["reversed"] == 1000
    assert final["friend"]["balances"]["reversed"] == 1200
    assert (await read(client, merchant, rest.json()["id"]))["amount_minor"] == 9_000


async def test_conversion_right_after_its_click_still_in_redis_is_attributed(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    click_id = await click(client, referral["link"])
    assert await db.fetchval("SELECT count(*) FROM clicks") == 0  # still buffered in Redis
    response = await post(client, merchant, {
        "event_id": "o-1", "type": "purchase", "order_id": "1", "amount_minor": 5000,
        "currency": "EUR", "click_id": click_id, "customer_id": "cust-ben"})  # fmt: skip
    await flush(settings)
    assert (await read(client, merchant, response.json()["id"]))["attribution_method"] == "click_id"


async def test_referral_code_typed_at_checkout(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    code = referral["advocate"]["referral_code"].lower()
    response = await post(client, merchant, {
        "event_id": "o-2", "type": "purchase", "order_id": "2", "amount_minor": 5000,
        "currency": "EUR", "referral_code": f" {code} ", "customer_id": "cust-ben"})  # fmt: skip
    await flush(settings)
    found = await read(client, merchant, response.json()["id"])
    assert found["attribution_method"] == "referral_code"
    assert found["advocate_id"] == referral["advocate"]["id"]


async def test_advocate_buying_through_their_own_link_earns_nothing(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    click_id = await click(client, referral["link"])
    response = await post(client, merchant, {
        "event_id": "o-3", "type": "purchase", "order_id": "3", "amount_minor": 5000,
        "currency": "EUR", "click_id": click_id, "customer_email": "anna@example.com"})  # fmt: skip
    await flush(settings)
    found = await read(client, merchant, response.json()["id"])
    # Attributed (the evidence is the advocate's link), and refused by the self_referral rule:
    # every reward is rejected in the ledger, with the reason.
    assert found["state"] == "attributed" and found["fraud"]["action"] == "reject"
    assert "self-referral" in found["reason"]
    assert found["rewards"] and all(r["state"] == "rejected" for r in found["rewards"])


async def test_retried_postback_creates_nothing_new(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    body = {"event_id": "o-4", "type": "purchase", "order_id": "4", "amount_minor": 5000,
            "currency": "EUR", "referral_code": referral["advocate"]["referral_code"],
            "customer_id": "cust-ben"}  # fmt: skip
    # Three distinct signatures by construction: offsets from one clock reading (read again
    # after a slow flush, "now - 2" could equal the first post's timestamp: a replay).
    now = int(time.time())
    first = await post(client, merchant, body, timestamp=now)
    retry = await post(client, merchant, body, timestamp=now - 1)  # re-signed
    assert first.json() == {"id": first.json()["id"], "status": "accepted"}
    assert retry.status_code == 202
    assert retry.json() == {"id": first.json()["id"], "status": "duplicate"}
    await flush(settings)
    late_retry = await post(client, merchant, body, timestamp=now - 2)
    assert late_retry.json()["id"] == first.json()["id"]
    await flush(settings)
    assert await db.fetchval("SELECT count(*) FROM conversions") == 1
    assert await db.fetchval("SELECT count(*) FROM rewards") == 2

    changed = await post(client, merchant, {**body, "amount_minor": 9999})
    assert changed.status_code == 409
    assert changed.json()["error"]["field"] == "body.event_id"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "missing X-Referral-Signature"),
        ("wrong secret", "does not match"),
        ("tampered body", "does not match"),
        ("stale", "outside the 5 minute tolerance"),
        ("future", "outside the 5 minute tolerance"),
        ("malformed", "malformed"),
    ],
)
async def test_bad_signatures_are_401_with_a_reason(
    client: httpx.AsyncClient, merchant: CreatedMerchant, case: str, expected: str, db: Any
) -> None:
    body = orjson.dumps({"event_id": "s-1", "type": "signup"})
    now = int(time.time())
    headers = {
        "missing": None,
        "wrong secret": webhooks.sign("whsec_other", now, body),
        "tampered body": webhooks.sign(merchant.webhook_secret, now, b'{"event_id":"x"}'),
        # A minute beyond the 5 minute tolerance: a slow machine may take a second or two
        # between this clock reading and the server's (301 s was accepted once in CI that way).
        "stale": webhooks.sign(merchant.webhook_secret, now - 360, body),
        "future": webhooks.sign(merchant.webhook_secret, now + 360, body),
        "malformed": "sha256=abc",
    }
    response = await client.post(
        "/v1/conversions",
        content=body,
        headers={"x-referral-merchant": str(merchant.id), "content-type": "application/json",
                 **({"x-referral-signature": headers[case]} if headers[case] else {})},
    )  # fmt: skip
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_signature"
    assert expected in response.json()["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM conversions") == 0


async def test_replayed_signature_is_refused(
    client: httpx.AsyncClient, merchant: CreatedMerchant
) -> None:
    body = orjson.dumps({"event_id": "s-2", "type": "signup"})
    signature = webhooks.sign(merchant.webhook_secret, int(time.time()), body)
    assert (await post(client, merchant, body, signature=signature)).status_code == 202
    replay = await post(client, merchant, body, signature=signature)
    assert replay.status_code == 401
    assert "replay" in replay.json()["error"]["message"]


async def test_unknown_merchant_is_401(client: httpx.AsyncClient, db: Any) -> None:
    response = await client.post(
        "/v1/conversions",
        content=b"{}",
        headers={"x-referral-merchant": "00000000-0000-0000-0000-000000000000",
                 "x-referral-signature": "t=1,v1=00"},
    )  # fmt: skip
    assert response.status_code == 401
    assert response.json()["error"]["field"] == "x-referral-merchant"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_id": "v", "type": "purchase", "order_id": "1", "amount_minor": 10.5,
          "currency": "EUR"}, "body.amount_minor"),
        ({"event_id": "v", "type": "purchase", "amount_minor": 100, "currency": "EUR"}, "body"),
        ({"event_id": "v", "type": "purchase", "order_id": "1", "amount_minor": 100,
          "currency": "euro"}, "body.currency"),
        ({"event_id": "v", "type": "signup", "click_id": "not-a-click"}, "body.click_id"),
        ({"event_id": "v", "type": "gift"}, "body.type"),
        ({"type": "signup"}, "body.event_id"),
    ],
)  # fmt: skip
async def test_invalid_conversion_is_422_naming_the_field(
    client: httpx.AsyncClient, merchant: CreatedMerchant, body: dict, field: str
) -> None:
    response = await post(client, merchant, body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field


async def test_rewards_are_approved_after_the_hold_and_never_twice(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules={**RULES, "hold_days": 0})
    advocate = await make_advocate(client, merchant, program, "cust-anna")
    response = await post(client, merchant, {
        "event_id": "o-5", "type": "purchase", "order_id": "5", "amount_minor": 5000,
        "currency": "EUR", "referral_code": advocate["referral_code"],
        "customer_id": "cust-ben"})  # fmt: skip
    await flush(settings)

    assert await scheduler.run(settings, once=True) == 2
    assert await scheduler.run(settings, once=True) == 0
    rewards = (await read(client, merchant, response.json()["id"]))["rewards"]
    assert {r["state"] for r in rewards} == {"approved"}
    assert all(r["balances"]["pending"] == 0 for r in rewards)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE reward_entries SET amount_minor = 1")


async def test_changed_rules_never_rewrite_past_rewards(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings
) -> None:
    code = referral["advocate"]["referral_code"]
    first = await post(client, merchant, {
        "event_id": "o-6", "type": "purchase", "order_id": "6", "amount_minor": 5000,
        "currency": "EUR", "referral_code": code, "customer_id": "c1"})  # fmt: skip
    await flush(settings)
    updated = await client.put(
        f"/v1/programs/{referral['program']['id']}/rules",
        json={**RULES, "advocate_reward": {"kind": "fixed", "amount_minor": 2500}},
        headers=auth(merchant),
    )
    assert updated.status_code == 200 and updated.json()["version"] == 2
    second = await post(client, merchant, {
        "event_id": "o-7", "type": "purchase", "order_id": "7", "amount_minor": 5000,
        "currency": "EUR", "referral_code": code, "customer_id": "c2"})  # fmt: skip
    await flush(settings)

    old = await read(client, merchant, first.json()["id"])
    new = await read(client, merchant, second.json()["id"])
    amount = {c["rules_version"]: next(r["amount_minor"] for r in c["rewards"]
              if r["beneficiary"] == "advocate") for c in (old, new)}  # fmt: skip
    assert amount == {1: 1000, 2: 2500}


async def test_another_merchant_cannot_read_a_conversion(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant,
    referral: dict, settings: Settings,
) -> None:  # fmt: skip
    response = await post(client, merchant, {"event_id": "s-9", "type": "signup"})
    queued = await client.get(f"/v1/conversions/{response.json()['id']}", headers=auth(merchant))
    assert queued.json()["state"] == "queued"
    await flush(settings)
    other = await client.get(
        f"/v1/conversions/{response.json()['id']}", headers=auth(other_merchant)
    )
    assert other.status_code == 404


async def test_pixel_links_the_cookie_to_the_order_for_the_postback(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    await click(client, referral["link"])  # the browser now has our cookie
    pixel = await client.get(
        "/t/pixel.gif", params={"m": str(merchant.id), "order_id": "777", "amount_minor": 4000,
                                "currency": "EUR"},
    )  # fmt: skip
    assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
    assert pixel.headers["cache-control"] == "no-store"
    await flush(settings)
    unverified = await db.fetchrow("SELECT state, verified, reason, advocate_id FROM conversions")
    assert unverified["state"] == "attributed" and not unverified["verified"]
    assert "no reward" in unverified["reason"]
    assert await db.fetchval("SELECT count(*) FROM rewards") == 0

    # The shop's backend posts the order without a click id: the pixel's cookie attributes it.
    response = await post(client, merchant, {
        "event_id": "o-777", "type": "purchase", "order_id": "777", "amount_minor": 4000,
        "currency": "EUR", "customer_id": "cust-ben"})  # fmt: skip
    await flush(settings)
    verified = await read(client, merchant, response.json()["id"])
    assert verified["attribution_method"] == "cookie"
    assert verified["advocate_id"] == referral["advocate"]["id"]
    assert len(verified["rewards"]) == 2
    states = await db.fetch("SELECT state FROM conversions WHERE NOT verified")
    assert [r["state"] for r in states] == ["superseded"]
    stats = await client.get(
        f"/v1/programs/{referral['program']['id']}/stats", headers=auth(merchant)
    )
    assert stats.json()["purchases"] == 1


async def test_a_pixel_and_its_order_flushed_together_still_attribute_by_the_cookie(
    client: httpx.AsyncClient, merchant: CreatedMerchant, referral: dict, settings: Settings,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    """The batch read the order as unclaimed before the pixel ahead of it in the same batch was
    stored: the order is not decided as unattributed in a group, but by its cookie."""
    await click(client, referral["link"])
    await flush(settings)
    pixel = await client.get("/t/pixel.gif", params={"m": str(merchant.id), "order_id": "778"})
    assert pixel.status_code == 200
    response = await post(client, merchant, {
        "event_id": "o-778", "type": "purchase", "order_id": "778", "amount_minor": 4000,
        "currency": "EUR", "customer_id": "cust-cleo"})  # fmt: skip
    plain = await post(client, merchant, {
        "event_id": "o-779", "type": "purchase", "order_id": "779", "amount_minor": 1000,
        "currency": "EUR", "customer_id": "cust-dan"})  # fmt: skip
    await flush(settings)  # one batch: the pixel, then both orders
    verified = await read(client, merchant, response.json()["id"])
    assert verified["attribution_method"] == "cookie"
    assert verified["advocate_id"] == referral["advocate"]["id"]
    unattributed = await read(client, merchant, plain.json()["id"])
    assert unattributed["state"] == "unattributed" and unattributed["reason"]


async def test_pixel_of_an_unknown_merchant_is_404(client: httpx.AsyncClient, db: Any) -> None:
    response = await client.get(
        "/t/pixel.gif", params={"m": "00000000-0000-0000-0000-000000000000", "order_id": "1"}
    )
    assert response.status_code == 404 and response.json()["error"]["field"] == "query.m"
    bad = await client.get("/t/pixel.gif", params={"m": "x", "order_id": "1"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "query.m"


async def test_approved_rewards_are_paid_and_fraud_is_rejected_with_a_reason(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant,
    settings: Settings,
) -> None:  # fmt: skip
    program = await make_program(client, merchant, rules={**RULES, "hold_days": 0})
    advocate = await make_advocate(client, merchant, program, "cust-anna")
    response = await post(client, merchant, {
        "event_id": "o-8", "type": "purchase", "order_id": "8", "amount_minor": 5000,
        "currency": "EUR", "referral_code": advocate["referral_code"],
        "customer_id": "cust-ben"})  # fmt: skip
    await flush(settings)
    await scheduler.run(settings, once=True)
    rewards = {
        r["beneficiary"]: r
        for r in (await read(client, merchant, response.json()["id"]))["rewards"]
    }
    paid_path = f"/v1/rewards/{rewards['advocate']['id']}/paid"
    reject_path = f"/v1/rewards/{rewards['friend']['id']}/reject"

    intruder = await client.post(paid_path, json={"reason": "x"}, headers=auth(other_merchant))
    assert intruder.status_code == 404
    paid = await client.post(paid_path, json={"reason": "payout PO-1"}, headers=auth(merchant))
    assert paid.status_code == 200 and paid.json()["state"] == "paid"
    assert paid.json()["balances"]["paid"] == 1000
    again = await client.post(paid_path, json={"reason": "twice"}, headers=auth(merchant))
    assert again.status_code == 422 and again.json()["error"]["code"] == "invalid_state"

    rejected = await client.post(
        reject_path, json={"reason": "same household as the advocate"}, headers=auth(merchant)
    )
    assert rejected.json()["state"] == "rejected"
    assert rejected.json()["balances"]["rejected"] == 500
    missing_reason = await client.post(reject_path, json={}, headers=auth(merchant))
    assert missing_reason.status_code == 422
    assert missing_reason.json()["error"]["field"] == "body.reason"


async def good_and_broken_advocates(
    client: httpx.AsyncClient, merchant: CreatedMerchant, db: asyncpg.Pool
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Anna in a sound program, Ben in one whose stored rules no version of the service can
    read (his conversions cannot be processed); and Ben's program."""
    good = await make_program(client, merchant, rules=RULES)
    broken = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, good, "cust-anna")
    ben = await make_advocate(client, merchant, broken, "cust-ben")
    await db.execute(  # corrupt: rules no version of the service can read
        "UPDATE program_rules SET rules = '{\"currency\": 5}' WHERE program_id = $1", broken["id"]
    )
    return anna, ben, broken


async def test_a_conversion_that_cannot_be_processed_is_set_aside_alone(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
    redis: Any,
) -> None:  # fmt: skip
    anna, ben, broken = await good_and_broken_advocates(client, merchant, db)
    for n, advocate in enumerate((ben, anna)):
        await post(client, merchant, {
            "event_id": f"o-{n}", "type": "purchase", "order_id": str(n), "amount_minor": 5000,
            "currency": "EUR", "referral_code": advocate["referral_code"]})  # fmt: skip
    await flush(settings)

    stored = await db.fetch("SELECT event_id, state FROM conversions")
    assert [(r["event_id"], r["state"]) for r in stored] == [("o-1", "attributed")]
    [dead] = await db.fetch("SELECT stream, payload, error FROM dead_letters")
    assert dead["stream"] == "conversions" and "ProgramRules" in dead["error"]
    assert b"o-0" in dead["payload"]

    # Mended (the rules restored), the dead letter is replayed and processed like any other.
    await db.execute("UPDATE program_rules SET rules = '{}' WHERE program_id = $1", broken["id"])
    assert await dead_letters.replay_dead_letters(db, redis) == 1
    await flush(settings)
    states = await db.fetch("SELECT event_id, state FROM conversions ORDER BY event_id")
    assert [(r["event_id"], r["state"]) for r in states] == [
        ("o-0", "attributed"), ("o-1", "attributed")]  # fmt: skip
    assert await dead_letters.list_dead_letters(db) == []


async def test_a_program_without_rules_is_a_stated_outcome_not_a_crash(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    await db.execute("DELETE FROM program_rules WHERE program_id = $1", program["id"])
    answer = await post(client, merchant, {
        "event_id": "o-1", "type": "purchase", "order_id": "1", "amount_minor": 5000,
        "currency": "EUR", "referral_code": anna["referral_code"]})  # fmt: skip
    await flush(settings)
    outcome = await read(client, merchant, answer.json()["id"])
    assert outcome["state"] == "unattributed" and "no reward rules" in outcome["reason"]
    assert await db.fetchval("SELECT count(*) FROM dead_letters") == 0
