"""Stripe and Shopify webhooks in, end to end (real PostgreSQL and Redis, through the API and the
flusher): payloads shaped like the providers' documented events, signed the provider's way —
Stripe's with the `stripe` library's own test helper, Shopify's with its documented HMAC —
become purchases, renewals and refunds, attributed by the click id they carry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import stripe

from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import auth, flush, make_advocate, make_program
from tests.test_conversions import RULES, click, read

STRIPE_SECRET = "whsec_test_0123456789abcdefghijklmnop"
SHOPIFY_SECRET = "shpss_0123456789abcdef0123456789abcdef"


async def _configure(client: httpx.AsyncClient, merchant: CreatedMerchant, provider: str,
                     secret: str) -> str:  # fmt: skip
    response = await client.put(f"/v1/integrations/{provider}", headers=auth(merchant),
                                json={"signing_secret": secret})  # fmt: skip
    assert response.status_code == 200, response.text
    url: str = response.json()["webhook_url"]
    assert url.endswith(f"/v1/integrations/{provider}/{merchant.id}/events")
    return f"/v1/integrations/{provider}/{merchant.id}/events"


def _stripe_event(kind: str, obj: dict[str, Any], **extra: Any) -> bytes:
    event = {"id": f"evt_{hashlib.sha256(orjson.dumps(obj) + kind.encode()).hexdigest()[:24]}",
             "object": "event", "api_version": "2024-06-20", "created": int(time.time()),
             "type": kind, "livemode": False, "pending_webhooks": 1,
             "data": {"object": obj, **extra}}  # fmt: skip
    return orjson.dumps(event)


async def _to_stripe(
    client: httpx.AsyncClient, path: str, payload: bytes, timestamp: int | None = None,
    secret: str = STRIPE_SECRET,
) -> httpx.Response:  # fmt: skip
    header = stripe.WebhookSignature.generate_signature_header(
        payload.decode(), secret, timestamp=timestamp
    )
    headers = {"stripe-signature": header, "content-type": "application/json"}
    return await client.post(path, content=payload, headers=headers)


def _session(click_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": "cs_test_a1", "object": "checkout.session", "mode": "payment",
            "amount_total": 8000, "currency": "eur", "customer": "cus_Friend1",
            "customer_details": {"email": "friend@example.com", "name": "F"},
            "client_reference_id": click_id, "payment_intent": "pi_3Friend1",
            "payment_status": "paid", "status": "complete", "metadata": {}, **fields}  # fmt: skip


async def test_a_stripe_checkout_is_a_purchase_attributed_by_its_click_and_refunded(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    path = await _configure(client, merchant, "stripe", STRIPE_SECRET)
    payload = _stripe_event("checkout.session.completed",
                            _session(await click(client, anna["links"][0])))  # fmt: skip
    accepted = await _to_stripe(client, path, payload)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "accepted"
    again = await _to_stripe(client, path, payload)  # Stripe retries: stored once
    assert again.status_code == 202 and again.json() == {**accepted.json(), "status": "duplicate"}
    await flush(settings)
    purchase = await read(client, merchant, accepted.json()["id"])
    assert purchase["state"] == "attributed" and purchase["attribution_method"] == "click_id"
    assert purchase["amount_minor"] == 8000 and purchase["order_id"] == "pi_3Friend1"
    assert {r["beneficiary"] for r in purchase["rewards"]} == {"advocate", "friend"}

    # A partial refund: charge.refunded with what it refunded before.
    charge = {"id": "ch_3Friend1", "object": "charge", "amount": 8000, "amount_refunded": 2000,
              "currency": "eur", "payment_intent": "pi_3Friend1", "refunded": False}  # fmt: skip
    refund = await _to_stripe(client, path, _stripe_event(
        "charge.refunded", charge, previous_attributes={"amount_refunded": 0}))  # fmt: skip
    assert refund.status_code == 202, refund.text
    await flush(settings)
    refunded = await read(client, merchant, refund.json()["id"])
    assert refunded["state"] == "refunded"
    advocate = next(r for r in (await read(client, merchant, accepted.json()["id"]))["rewards"]
                    if r["beneficiary"] == "advocate")  # fmt: skip
    assert advocate["balances"]["reversed"] == 250  # a quarter of the order


async def test_stripe_signatures_are_checked_and_other_events_ignored(
    client: httpx.AsyncClient, merchant: CreatedMerchant, other_merchant: CreatedMerchant
) -> None:
    path = await _configure(client, merchant, "stripe", STRIPE_SECRET)
    payload = _stripe_event("checkout.session.completed", _session("ANNA-7K3Q"))
    forged = await _to_stripe(client, path, payload, secret="whsec_not_the_one_0123456789")
    assert forged.status_code == 401
    assert forged.json()["error"]["field"] == "stripe-signature"
    stale = await _to_stripe(client, path, payload, timestamp=int(time.time()) - 600)
    assert stale.status_code == 401 and "tolerance" in stale.json()["error"]["message"].lower()
    unsigned = await client.post(path, content=payload)
    assert unsigned.status_code == 401
    # Another merchant without Stripe, or an unknown merchant: refused the same way.
    elsewhere = path.replace(str(merchant.id), str(other_merchant.id))
    assert (await _to_stripe(client, elsewhere, payload)).status_code == 401
    ignored = await _to_stripe(client, path, _stripe_event("customer.created", {"id": "cus_1"}))
    assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"
    pending = await _to_stripe(client, path, _stripe_event(
        "checkout.session.completed", _session("ANNA-7K3Q", payment_status="unpaid")))  # fmt: skip
    assert pending.status_code == 200 and "not paid" in pending.json()["reason"]
    # Mapped, but not a conversion we can store: 422 naming the field.
    broken = await _to_stripe(client, path, _stripe_event(
        "checkout.session.completed", _session("ANNA-7K3Q", currency=None)))  # fmt: skip
    assert broken.status_code == 422 and "currency" in broken.json()["error"]["message"]


async def test_a_stripe_subscription_renews_through_invoice_paid(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    path = await _configure(client, merchant, "stripe", STRIPE_SECRET)
    first = _session(await click(client, anna["links"][0]), mode="subscription",
                     payment_intent=None, invoice="in_First1",
                     subscription="sub_Friend1")  # fmt: skip
    started = await _to_stripe(client, path, _stripe_event("checkout.session.completed", first))
    assert started.status_code == 202
    invoice = {"id": "in_Second2", "object": "invoice", "amount_paid": 8000, "currency": "eur",
               "customer": "cus_Friend1", "subscription": "sub_Friend1",
               "billing_reason": "subscription_cycle", "status": "paid"}  # fmt: skip
    renewed = await _to_stripe(client, path, _stripe_event("invoice.paid", invoice))
    assert renewed.status_code == 202, renewed.text
    first_invoice = {**invoice, "id": "in_First1", "billing_reason": "subscription_create"}
    opening = await _to_stripe(client, path, _stripe_event("invoice.paid", first_invoice))
    assert opening.json()["status"] == "ignored"
    await flush(settings)
    renewal = await read(client, merchant, renewed.json()["id"])
    assert renewal["type"] == "renewal" and renewal["order_id"] == "in_Second2"
    assert renewal["state"] == "attributed"


def _shopify_sign(payload: bytes, secret: str = SHOPIFY_SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), payload, hashlib.sha256).digest()).decode()


async def _to_shopify(client: httpx.AsyncClient, path: str, topic: str, body: dict[str, Any],
                      secret: str = SHOPIFY_SECRET) -> httpx.Response:  # fmt: skip
    payload = orjson.dumps(body)
    return await client.post(path, content=payload, headers={
        "x-shopify-hmac-sha256": _shopify_sign(payload, secret), "x-shopify-topic": topic,
        "x-shopify-shop-domain": "acme.myshopify.com", "content-type": "application/json",
        "x-shopify-webhook-id": f"wh-{topic}"})  # fmt: skip


async def test_a_shopify_order_is_a_purchase_by_its_cart_attribute_and_its_refund_follows(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings
) -> None:
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    path = await _configure(client, merchant, "shopify", SHOPIFY_SECRET)
    order = {"id": 820982911946154508, "name": "#1001", "email": "friend@example.com",
             "created_at": datetime.now(UTC).isoformat(), "currency": "EUR",
             "total_price": "80.00", "financial_status": "paid",
             "customer": {"id": 115310627314723954, "email": "friend@example.com"},
             "note_attributes": [{"name": "rcid", "value": await click(client, anna["links"][0])}],
             "discount_codes": [], "landing_site": "/?utm_source=x"}  # fmt: skip
    paid = await _to_shopify(client, path, "orders/paid", order)
    assert paid.status_code == 202, paid.text
    created = await _to_shopify(client, path, "orders/create", order)  # both topics: once
    assert created.json()["status"] == "duplicate"
    forged = await _to_shopify(client, path, "orders/paid", order, secret="shpss_wrong_secret")
    assert forged.status_code == 401
    assert forged.json()["error"]["field"] == "x-shopify-hmac-sha256"
    await flush(settings)
    purchase = await read(client, merchant, paid.json()["id"])
    assert purchase["state"] == "attributed" and purchase["amount_minor"] == 8000
    assert purchase["order_id"] == "820982911946154508"

    refund = {"id": 509562969, "order_id": 820982911946154508, "created_at": "2026-12-01",
              "transactions": [{"id": 1, "kind": "refund", "status": "success",
                                "amount": "20.00", "currency": "EUR"},
                               {"id": 2, "kind": "refund", "status": "failure",
                                "amount": "60.00", "currency": "EUR"}]}  # fmt: skip
    refunded = await _to_shopify(client, path, "refunds/create", refund)
    assert refunded.status_code == 202, refunded.text
    await flush(settings)
    advocate = next(r for r in (await read(client, merchant, paid.json()["id"]))["rewards"]
                    if r["beneficiary"] == "advocate")  # fmt: skip
    assert advocate["balances"]["reversed"] == 250
    listed = (await client.get("/v1/integrations", headers=auth(merchant))).json()
    assert [i["provider"] for i in listed] == ["shopify"]
    assert (
        await client.delete("/v1/integrations/shopify", headers=auth(merchant))
    ).status_code == 204
    assert (await _to_shopify(client, path, "orders/paid", order)).status_code == 401
