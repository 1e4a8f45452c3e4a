"""Fraud end to end, one test per attack, through the API, the redirect and the flusher (real
PostgreSQL and Redis): the decision, its reason, the ledger state; then the review queue
(approve, reject, ban), a refund of a held conversion, the statistics and the preview."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app import metrics
from app.services.fraud import flag_click_floods
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from app.workers import scheduler
from tests.conftest import BROWSER_UA, auth, flush, make_program
from tests.test_conversions import RULES, click, post, read

FRIEND_RULES = {**RULES, "friend_reward": {"kind": "fixed", "amount_minor": 500}}


def with_fraud(**fraud: dict[str, Any]) -> dict[str, Any]:
    return {**FRIEND_RULES, "fraud": fraud}


async def enroll(
    client: httpx.AsyncClient, merchant: CreatedMerchant, program: dict[str, Any],
    external_id: str = "cust-anna", email: str = "anna.maria@gmail.com",
) -> dict[str, Any]:  # fmt: skip
    response = await client.post(
        f"/v1/programs/{program['id']}/advocates",
        json={"external_id": external_id, "name": "Anna", "email": email},
        headers=auth(merchant),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def buy(client: httpx.AsyncClient, merchant: CreatedMerchant, n: int, **fields: Any) -> str:
    body = {"event_id": f"o-{n}", "type": "purchase", "order_id": f"order-{n}",
            "amount_minor": 5000, "currency": "EUR", "customer_id": f"friend-{n}",
            **fields}  # fmt: skip
    response = await post(client, merchant, body)
    assert response.status_code == 202, response.text
    conversion_id: str = response.json()["id"]
    return conversion_id


def rule_names(conversion: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in conversion["fraud"]["findings"]}


def states(conversion: dict[str, Any]) -> dict[str, str]:
    return {r["beneficiary"]: r["state"] for r in conversion["rewards"]}


async def decide(
    client: httpx.AsyncClient, merchant: CreatedMerchant, item: str, decision: str,
    note: str = "",
) -> httpx.Response:  # fmt: skip
    return await client.post(
        f"/v1/review/items/{item}/decision", json={"decision": decision, "note": note},
        headers=auth(merchant),
    )  # fmt: skip


# -- One test per attack ------------------------------------------------------------------------


@pytest.mark.parametrize("email", ["anna.maria+shoes@gmail.com", "a.nna.maria@googlemail.com"])
async def test_self_referral_through_a_tag_or_gmail_dots_is_rejected(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, email: str
) -> None:
    program = await make_program(client, merchant, rules=FRIEND_RULES)
    anna = await enroll(client, merchant, program)
    before = metrics.fraud_decisions.labels("self_referral", "reject")._value.get()
    conversion = await buy(client, merchant, 1, customer_email=email,
                           click_id=await click(client, anna["links"][0]))  # fmt: skip
    await flush(settings)
    found = await read(client, merchant, conversion)
    assert found["fraud"]["action"] == "reject" and "self_referral" in rule_names(found)
    assert "+tag and dots" in found["reason"]
    assert "self-referral" in found["reason"]
    assert states(found) == {"advocate": "rejected", "friend": "rejected"}
    assert metrics.fraud_decisions.labels("self_referral", "reject")._value.get() == before + 1


async def test_the_advocates_own_browser_buying_through_their_link_is_held(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    program = await make_program(client, merchant, rules=FRIEND_RULES)
    anna = await enroll(client, merchant, program)
    link = anna["links"][0]
    # Anna buys for herself from her phone (the client keeps our cookie: one browser).
    own = await buy(client, merchant, 1, customer_id="cust-anna",
                    click_id=await click(client, link))  # fmt: skip
    await flush(settings)
    assert (await read(client, merchant, own))["fraud"]["action"] == "reject"
    # Then a "friend" buys through her link from the same browser.
    fake = await buy(client, merchant, 2, customer_email="zed@example.com",
                     click_id=await click(client, link))  # fmt: skip
    await flush(settings)
    found = await read(client, merchant, fake)
    assert found["fraud"]["action"] == "hold"
    assert "same_device_as_advocate" in rule_names(found)
    assert "our cookie" in found["reason"]
    assert states(found) == {"advocate": "held", "friend": "held"}
    assert found["fraud"]["review_status"] == "open"


async def test_a_scripted_flood_of_clicks_is_flagged_and_its_conversion_held(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules=FRIEND_RULES)  # default: 20 in 10 min
    link = (await enroll(client, merchant, program))["links"][0]
    click_ids = []
    for _ in range(25):  # one IP, one link, seconds apart
        client.cookies.clear()
        click_ids.append(await click(client, link))
    conversion = await buy(client, merchant, 1, click_id=click_ids[-1])
    await flush(settings)
    found = await read(client, merchant, conversion)
    flood = next(f for f in found["fraud"]["findings"] if f["rule"] == "click_flood")
    assert (flood["action"], flood["value"], flood["threshold"]) == ("hold", 25, 20)
    assert states(found) == {"advocate": "held", "friend": "held"}
    # The sweep flags the clicks themselves; the statistics show them apart.
    assert await flag_click_floods(db, datetime.now(UTC) + timedelta(minutes=3)) == 25
    assert await flag_click_floods(db, datetime.now(UTC) + timedelta(minutes=4)) == 0
    stats = (await client.get(f"/v1/programs/{program['id']}/stats", headers=auth(merchant))).json()
    assert (stats["clicks"], stats["flagged_clicks"]) == (0, 25)
    assert stats["held_conversions"] == 1 and stats["held_orders_minor"] == {"EUR": 5000}


async def test_a_conversion_from_a_disposable_mailbox_is_held(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    program = await make_program(client, merchant, rules=FRIEND_RULES)
    anna = await enroll(client, merchant, program)
    conversion = await buy(client, merchant, 1, customer_email="temp123@mailinator.com",
                           referral_code=anna["referral_code"])  # fmt: skip
    await flush(settings)
    found = await read(client, merchant, conversion)
    assert found["fraud"]["action"] == "hold" and rule_names(found) == {"disposable_email"}
    assert "disposable-mailbox" in found["reason"]
    assert states(found) == {"advocate": "held", "friend": "held"}


async def test_a_gclid_in_the_clicks_query_is_paid_traffic(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant,
                                 rules=with_fraud(paid_ad_click={"action": "hold"}))  # fmt: skip
    link = (await enroll(client, merchant, program))["links"][0]
    response = await client.get(f"/r/{link['code']}?gclid=Cj0KCQiA&utm_source=google",
                                headers={"user-agent": BROWSER_UA})  # fmt: skip
    assert "gclid=Cj0KCQiA" in response.headers["location"]  # the shop still gets it
    click_id = response.headers["location"].split("rcid=")[1][:32]
    conversion = await buy(client, merchant, 1, click_id=click_id)
    await flush(settings)
    found = await read(client, merchant, conversion)
    # (Bought at once after the click: fast_conversion flags it too.)
    assert found["fraud"]["action"] == "hold" and "paid_ad_click" in rule_names(found)
    assert "(gclid)" in found["reason"]
    assert states(found) == {"advocate": "held", "friend": "held"}
    # Only the parameter's name is kept, never the ad network's id.
    assert await db.fetchval("SELECT ad_click_param FROM clicks") == "gclid"


async def test_a_purchase_two_seconds_after_its_click_is_flagged_only(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    program = await make_program(client, merchant, rules=FRIEND_RULES)  # default: flag < 10 s
    click_id = await click(client, (await enroll(client, merchant, program))["links"][0])
    clicked = datetime.fromtimestamp(int(click_id[:12], 16) / 1000, UTC)
    conversion = await buy(client, merchant, 1, click_id=click_id,
                           occurred_at=(clicked + timedelta(seconds=2)).isoformat())  # fmt: skip
    await flush(settings)
    found = await read(client, merchant, conversion)
    fast = found["fraud"]["findings"][0]
    assert found["fraud"]["action"] == "flag" and fast["rule"] == "fast_conversion"
    assert fast["value"] == 2 and fast["threshold"] == 10
    # Shadow mode: recorded, nothing held.
    assert states(found) == {"advocate": "pending", "friend": "pending"}
    assert found["fraud"]["review_id"] is None


async def test_an_order_over_the_review_amount_is_held(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    rules = with_fraud(high_value_order={"action": "hold", "above_minor": 20_000})
    program = await make_program(client, merchant, rules=rules)
    anna = await enroll(client, merchant, program)
    small = await buy(client, merchant, 1, referral_code=anna["referral_code"])
    big = await buy(client, merchant, 2, referral_code=anna["referral_code"], amount_minor=50_000)
    await flush(settings)
    assert (await read(client, merchant, small))["fraud"]["action"] == "none"
    found = await read(client, merchant, big)
    assert found["fraud"]["action"] == "hold" and rule_names(found) == {"high_value_order"}
    assert "50000" in found["reason"] and "20000" in found["reason"]
    assert states(found) == {"advocate": "held", "friend": "held"}


async def test_rewards_past_a_monthly_cap_hold_only_the_excess(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    rules = with_fraud(reward_cap={"action": "hold", "period": "month", "cap_minor": 1500})
    program = await make_program(client, merchant, rules=rules)
    anna = await enroll(client, merchant, program)
    first = await buy(client, merchant, 1, referral_code=anna["referral_code"])
    await flush(settings)
    second = await buy(client, merchant, 2, referral_code=anna["referral_code"])
    third = await buy(client, merchant, 3, referral_code=anna["referral_code"])
    await flush(settings)
    assert (await read(client, merchant, first))["fraud"]["action"] == "none"
    found = await read(client, merchant, second)
    advocate = next(r for r in found["rewards"] if r["beneficiary"] == "advocate")
    assert advocate["balances"]["pending"] == 500 and advocate["balances"]["held"] == 500
    assert found["fraud"]["action"] == "hold" and "1500" in found["reason"]
    friend = next(r for r in found["rewards"] if r["beneficiary"] == "friend")
    assert friend["state"] == "pending"  # the cap is the advocate's
    over = await read(client, merchant, third)
    advocate = next(r for r in over["rewards"] if r["beneficiary"] == "advocate")
    assert advocate["balances"]["held"] == 1000 and advocate["balances"]["pending"] == 0


# -- The review queue ---------------------------------------------------------------------------


@pytest.fixture
async def held(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> dict[str, Any]:
    """A program that holds orders above 200.00 (rewards approved at once otherwise), Anna, and
    one held conversion of hers."""
    rules = {**with_fraud(high_value_order={"action": "hold", "above_minor": 20_000}),
             "hold_days": 0}  # fmt: skip
    program = await make_program(client, merchant, rules=rules)
    anna = await enroll(client, merchant, program)
    conversion = await buy(client, merchant, 9, referral_code=anna["referral_code"],
                           amount_minor=50_000)  # fmt: skip
    await flush(settings)
    found = await read(client, merchant, conversion)
    return {"program": program, "anna": anna, "conversion": found,
            "item": found["fraud"]["review_id"]}  # fmt: skip


async def test_approving_releases_held_rewards_to_their_normal_hold(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, held: dict,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    assert await scheduler.run(settings, once=True) == 0  # held: never approved by time
    answer = await decide(client, merchant, held["item"], "approve", "known customer")
    assert answer.status_code == 200, answer.text
    item = answer.json()
    assert item["status"] == "approved" and item["note"] == "known customer"
    key_id = await db.fetchval("SELECT id FROM api_keys WHERE merchant_id = $1", merchant.id)
    assert item["decided_by"] == str(key_id) and item["decided_at"]
    assert states(item["conversion"]) == {"advocate": "pending", "friend": "pending"}
    assert await scheduler.run(settings, once=True) == 2  # now its hold (0 days) is over
    # Idempotent: the same decision again answers the same; another one is refused.
    again = await decide(client, merchant, held["item"], "approve", "known customer")
    assert again.status_code == 200 and again.json()["decided_at"] == item["decided_at"]
    assert (await decide(client, merchant, held["item"], "reject")).status_code == 409
    entries = await db.fetchval("SELECT count(*) FROM reward_entries")
    await decide(client, merchant, held["item"], "approve")
    assert await db.fetchval("SELECT count(*) FROM reward_entries") == entries


async def test_rejecting_rejects_held_rewards_with_the_note(
    client: httpx.AsyncClient, merchant: CreatedMerchant, held: dict, db: asyncpg.Pool
) -> None:
    answer = await decide(client, merchant, held["item"], "reject", "stolen card")
    assert answer.status_code == 200
    assert states(answer.json()["conversion"]) == {"advocate": "rejected", "friend": "rejected"}
    reasons = await db.fetch("SELECT reason FROM reward_entries WHERE to_state = 'rejected'")
    assert [r["reason"] for r in reasons] == ["rejected after review: stolen card"] * 2


async def test_a_ban_stops_redirects_and_rejects_what_was_pending_and_held(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, held: dict
) -> None:
    anna, code = held["anna"], held["anna"]["links"][0]["code"]
    clean = await buy(client, merchant, 1, referral_code=anna["referral_code"])
    await flush(settings)
    assert states(await read(client, merchant, clean)) == {"advocate": "pending",
                                                          "friend": "pending"}  # fmt: skip
    assert (await client.get(f"/r/{code}")).status_code == 302
    answer = await decide(client, merchant, held["item"], "ban_advocate", "fraud ring")
    assert answer.status_code == 200 and answer.json()["status"] == "banned"
    assert (await client.get(f"/r/{code}")).status_code == 404  # at once
    for conversion in (clean, held["conversion"]["id"]):
        found = await read(client, merchant, conversion)
        assert states(found) == {"advocate": "rejected", "friend": "rejected"}
    shown = (await client.get(f"/v1/advocates/{anna['id']}", headers=auth(merchant))).json()
    assert shown["banned_at"] and shown["ban_reason"] == "fraud ring"
    later = await buy(client, merchant, 2, referral_code=anna["referral_code"])
    await flush(settings)
    found = await read(client, merchant, later)
    assert found["fraud"]["action"] == "reject" and "advocate_banned" in rule_names(found)
    assert states(found) == {"advocate": "rejected", "friend": "rejected"}


async def test_a_refund_of_a_held_conversion_reverses_the_held_amount(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, held: dict
) -> None:
    refund = await post(client, merchant, {"event_id": "r-9", "type": "refund",
                                           "refund_of": "order-9"})  # fmt: skip
    await flush(settings)
    assert (await read(client, merchant, refund.json()["id"]))["state"] == "refunded"
    found = await read(client, merchant, held["conversion"]["id"])
    for reward in found["rewards"]:
        assert reward["balances"]["held"] == 0 and reward["state"] == "reversed"
        assert reward["balances"]["reversed"] == reward["amount_minor"]
    # Approving afterwards moves nothing: there is nothing held any more.
    answer = await decide(client, merchant, held["item"], "approve")
    assert states(answer.json()["conversion"]) == {"advocate": "reversed", "friend": "reversed"}


async def test_the_queue_lists_oldest_first_with_filters_a_cursor_and_tenant_isolation(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant,
    settings: Settings, held: dict,
) -> None:  # fmt: skip
    anna = held["anna"]
    for n in (1, 2):
        await buy(client, merchant, 10 + n, referral_code=anna["referral_code"],
                  amount_minor=60_000)  # fmt: skip
        await flush(settings)
    await buy(client, merchant, 20, referral_code=anna["referral_code"],
              customer_email="x@mailinator.com")  # fmt: skip
    await flush(settings)
    url = "/v1/review/items"
    first = (await client.get(url, params={"limit": 2}, headers=auth(merchant))).json()
    assert len(first["items"]) == 2 and first["items"][0]["id"] == held["item"]
    rest = (await client.get(url, params={"limit": 2, "cursor": first["next_cursor"]},
                             headers=auth(merchant))).json()  # fmt: skip
    assert len(rest["items"]) == 2 and rest["next_cursor"] is None
    opened = [i["opened_at"] for i in first["items"] + rest["items"]]
    assert opened == sorted(opened)
    disposable = (await client.get(url, params={"rule": "disposable_email"},
                                   headers=auth(merchant))).json()  # fmt: skip
    assert [i["rules"] for i in disposable["items"]] == [["disposable_email"]]
    by_advocate = await client.get(url, params={"advocate_id": anna["id"]}, headers=auth(merchant))
    assert len(by_advocate.json()["items"]) == 4
    detail = (await client.get(f"{url}/{held['item']}", headers=auth(merchant))).json()
    assert detail["conversion"]["attribution_method"] == "referral_code"
    assert detail["conversion"]["fraud"]["findings"][0]["rule"] == "high_value_order"
    # Another merchant sees none of it.
    assert (await client.get(url, headers=auth(other_merchant))).json()["items"] == []
    assert (await client.get(f"{url}/{held['item']}",
                             headers=auth(other_merchant))).status_code == 404  # fmt: skip
    assert (await decide(client, other_merchant, held["item"], "approve")).status_code == 404


# -- The preview ----------------------------------------------------------------------------------

_COUNTED = ["conversions", "rewards", "reward_entries", "review_items", "program_rules",
            "advocates", "clicks", "links"]  # fmt: skip


async def test_the_preview_says_what_would_change_and_writes_nothing(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> None:
    program = await make_program(client, merchant, rules=FRIEND_RULES)
    anna = await enroll(client, merchant, program)
    for n, amount in enumerate((5_000, 30_000, 80_000)):
        await buy(client, merchant, n, referral_code=anna["referral_code"], amount_minor=amount)
    await flush(settings)
    before = {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in _COUNTED}
    proposal = {
        "high_value_order": {"action": "hold", "above_minor": 20_000},
        "reward_cap": {"action": "reject", "period": "month", "cap_minor": 2_000},
    }
    answer = await client.post(
        f"/v1/programs/{program['id']}/fraud-preview", json={"fraud": proposal, "days": 30},
        headers=auth(merchant),
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["conversions"] == 3 and preview["current"]["none"] == 3
    # 300.00 and 800.00 are above 200.00 (held); the third advocate reward of 10.00 would pass
    # the cap of 20.00 (rejected, the stronger action).
    assert preview["proposed"] == {"none": 1, "flag": 0, "hold": 1, "reject": 1}
    assert preview["per_rule"]["high_value_order"]["hold"] == 2
    assert preview["per_rule"]["reward_cap"]["reject"] == 1
    assert preview["changed"] == 2 and len(preview["examples"]) == 2
    after = {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in _COUNTED}
    assert after == before
