"""Tenant isolation, checked on every operation the OpenAPI document lists: each operation that
takes an object's id is called with another merchant's key and this merchant's real ids, and
must answer 404 — the same as for an id that does not exist. The operations come from the
document itself, so a new endpoint is covered without anyone remembering to; one with a body
needs a valid example below (the test says so), or validation would answer before the lookup."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import httpx

from app.main import TrackingApp
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from app.workers import scheduler
from tests.conftest import auth, flush, make_advocate, make_program
from tests.test_conversions import RULES, post

VARIANT = {"rules": RULES}
# A valid body for each operation with one (validation answers before the lookup otherwise).
BODIES: dict[str, Any] = {
    "PUT /v1/programs/{program_id}/rules": RULES,
    "POST /v1/programs/{program_id}/advocates": {"external_id": "intruder"},
    "POST /v1/programs/{program_id}/experiments": {
        "name": "x", "baseline_rate": 0.1, "minimum_detectable_effect": 0.05,
        "variants": [{"key": "A", **VARIANT}, {"key": "B", **VARIANT}],
    },
    "POST /v1/programs/{program_id}/fraud-preview": {"fraud": {}},
    "POST /v1/advocates/{advocate_id}/links": {"channel": "email"},
    "POST /v1/advocates/{advocate_id}/dashboard-token": {},
    "PUT /v1/advocates/{advocate_id}/payout-details": {"payout_email": "x@example.com"},
    "PATCH /v1/links/{link_id}": {"active": False},
    "POST /v1/rewards/{reward_id}/paid": {"reason": "intruder"},
    "POST /v1/rewards/{reward_id}/reject": {"reason": "intruder"},
    "POST /v1/review/items/{item_id}/decision": {"decision": "approve"},
    "POST /v1/experiments/{experiment_id}/promote": {"variant": "A"},
    "POST /v1/payouts/{payout_id}/complete": {},
    "POST /v1/payouts/{payout_id}/fail": {"reason": "intruder"},
    "POST /v1/api-keys/{key_id}/rotate": {},
    "PATCH /v1/webhook-endpoints/{endpoint_id}": {"enabled": False},
    "POST /v1/webhook-endpoints/{endpoint_id}/rotate-secret": {},
}  # fmt: skip


async def _objects(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool
) -> dict[str, str]:
    """One of each kind of object of `merchant`, by the path parameter that names it."""
    rules = {**RULES, "hold_days": 0, "reward_event": "every_purchase",
             "fraud": {"high_value_order": {"action": "hold", "above_minor": 20_000}}}  # fmt: skip
    program = await make_program(client, merchant, rules=rules)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    ids = {}
    for order, amount in (("o1", 5000), ("o2", 50_000)):
        response = await post(client, merchant, {
            "event_id": order, "type": "purchase", "order_id": order, "amount_minor": amount,
            "currency": "EUR", "customer_id": f"friend-{order}",
            "referral_code": anna["referral_code"]})  # fmt: skip
        ids[order] = response.json()["id"]
    await flush(settings)
    await scheduler.run(settings, once=True)
    h = auth(merchant)
    conversion = (await client.get(f"/v1/conversions/{ids['o1']}", headers=h)).json()
    held = (await client.get(f"/v1/conversions/{ids['o2']}", headers=h)).json()
    payout = await client.post("/v1/payouts", json={}, headers={**h, "Idempotency-Key": "k"})
    experiment = await client.post(f"/v1/programs/{program['id']}/experiments",
                                   json=BODIES["POST /v1/programs/{program_id}/experiments"],
                                   headers=h)  # fmt: skip
    report = await client.post(
        "/v1/reconciliation-reports", content=b"order_id,status,amount,currency\n",
        params={"period_start": "2026-01-01T00:00:00Z", "period_end": "2027-01-01T00:00:00Z"},
        headers={**h, "content-type": "text/csv"},
    )  # fmt: skip
    keys = (await client.get("/v1/api-keys", headers=h)).json()
    token = await client.post(f"/v1/advocates/{anna['id']}/dashboard-token", headers=h)
    hook = await client.post("/v1/webhook-endpoints", json={"url": "https://hooks.example.com/"},
                             headers=h)  # fmt: skip
    await client.post(f"/v1/webhook-endpoints/{hook.json()['id']}/test", headers=h)
    delivery = await db.fetchval("SELECT id FROM webhook_deliveries LIMIT 1")
    return {
        "endpoint_id": hook.json()["id"], "delivery_id": str(delivery),
        "token_id": token.json()["id"],
        "key_id": keys[0]["id"],
        "program_id": program["id"], "advocate_id": anna["id"],
        "link_id": anna["links"][0]["id"], "conversion_id": conversion["id"],
        "reward_id": conversion["rewards"][0]["id"], "item_id": held["fraud"]["review_id"],
        "experiment_id": experiment.json()["id"], "payout_id": payout.json()["id"],
        "report_id": report.json()["id"],
    }  # fmt: skip


# Path parameters that name no object of a merchant: a provider is one of two fixed names, and
# the provider webhook's merchant id is the receiver's address (public, signed by the provider:
# any merchant without that integration is a 401 there, tests/test_integrations.py).
NOT_OBJECTS = {"provider"}
NOT_TENANT_OPERATIONS = {"POST /v1/integrations/{provider}/{merchant_id}/events"}


async def test_every_operation_on_another_merchants_object_answers_404(
    app: TrackingApp, client: httpx.AsyncClient, merchant: CreatedMerchant,
    other_merchant: CreatedMerchant, settings: Settings, db: asyncpg.Pool,
) -> None:  # fmt: skip
    ids = await _objects(client, merchant, settings, db)
    document = app.api.openapi()
    checked, missing, leaks = [], [], []
    for path, operations in document["paths"].items():
        names = [n for n in re.findall(r"{(\w+)}", path) if n not in NOT_OBJECTS]
        if not names:
            continue
        for method, operation in operations.items():
            op = f"{method.upper()} {path}"
            if op in NOT_TENANT_OPERATIONS:
                continue
            unknown = [n for n in names if n not in ids]
            assert not unknown, f"{op}: no object of ours for {unknown}; add one to _objects"
            body = BODIES.get(op)
            if operation.get("requestBody", {}).get("required") and body is None:
                missing.append(op)
                continue
            url = path.format(**ids, provider="stripe")
            # Each call with the intruder's key: this merchant's object must not exist for it.
            answer = await client.request(method.upper(), url, json=body,
                                          headers=auth(other_merchant))  # fmt: skip
            checked.append(op)
            if answer.status_code != 404:
                leaks.append((op, answer.status_code, answer.text[:200]))
    assert not missing, f"add a valid example body for: {missing}"
    assert not leaks, leaks
    assert len(checked) >= 30
    # And the ids are real: the owner reads each of them.
    for name, url in (("program_id", "/v1/programs/{program_id}"),
                      ("payout_id", "/v1/payouts/{payout_id}"),
                      ("item_id", "/v1/review/items/{item_id}"),
                      ("report_id", "/v1/reconciliation-reports/{report_id}"),
                      ("experiment_id", "/v1/experiments/{experiment_id}")):  # fmt: skip
        own = await client.get(url.format(**ids), headers=auth(merchant))
        assert own.status_code == 200, (name, own.text)
