"""Shopify webhooks → our conversions. Verified as Shopify documents it:
`X-Shopify-Hmac-Sha256` is the base64 HMAC-SHA256 of the raw body under the app's client
secret (compared in constant time).

- `orders/paid` (or `orders/create` once its financial status is paid) → a purchase; both map
  to the same event id (`shopify:order:<id>`), so subscribing to both stores it once.
- `refunds/create` → a refund of its order, for the successful refund transactions' total.
- The click id comes from the order's note attributes (`rcid`, as our snippet writes it from the
  cart) or from the `rcid` parameter of its landing site; the referral code from its first
  discount code when there is no click id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from app.attribution.payouts import parse_amount
from app.pipeline.events import is_click_id
from app.providers import Mapped, ProviderSignatureError, as_dict

CLICK_ATTRIBUTES = ("rcid", "click_id", "referral_click_id")


def sign(payload: bytes, secret: str) -> str:
    return base64.b64encode(hmac.digest(secret.encode(), payload, hashlib.sha256)).decode()


def verify(payload: bytes, header: str | None, secret: str) -> dict[str, Any]:
    if not header:
        raise ProviderSignatureError("missing X-Shopify-Hmac-Sha256 header")
    if not hmac.compare_digest(sign(payload, secret).encode(), header.strip().encode()):
        raise ProviderSignatureError("Shopify signature refused: the HMAC does not match")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProviderSignatureError("the signed payload is not JSON") from None
    if not isinstance(body, dict):
        raise ProviderSignatureError("the signed payload is not a Shopify object")
    return body


def _click(order: dict[str, Any]) -> str | None:
    for attribute in order.get("note_attributes") or []:
        if isinstance(attribute, dict) and attribute.get("name") in CLICK_ATTRIBUTES:
            value = str(attribute.get("value") or "").strip().lower()
            if is_click_id(value):
                return value
    landing = order.get("landing_site")
    if isinstance(landing, str) and landing:
        values = parse_qs(urlsplit(landing).query).get("rcid") or []
        if values and is_click_id(values[0].lower()):
            return values[0].lower()
    return None


def _amount(text: Any, currency: Any) -> int | None:
    try:
        return parse_amount(str(text), str(currency))
    except (ValueError, KeyError, LookupError):
        return None


def map_event(topic: str | None, body: dict[str, Any]) -> Mapped:
    if topic in ("orders/paid", "orders/create"):
        if topic == "orders/create" and body.get("financial_status") != "paid":
            return Mapped(ignored="not paid yet: orders/paid follows when it is")
        if body.get("id") is None:
            return Mapped(ignored="an order without an id")
        currency = str(body.get("currency") or "").upper() or None
        customer = as_dict(body.get("customer"))
        mapped: dict[str, Any] = {
            "event_id": f"shopify:order:{body['id']}", "type": "purchase",
            "order_id": str(body["id"]), "currency": currency,
            "amount_minor": _amount(body.get("total_price"), currency),
        }  # fmt: skip
        if customer.get("id") is not None:
            mapped["customer_id"] = str(customer["id"])
        email = body.get("email") or customer.get("email")
        if email:
            mapped["customer_email"] = email
        if isinstance(body.get("created_at"), str):
            mapped["occurred_at"] = body["created_at"]
        click = _click(body)
        codes = [d.get("code") for d in body.get("discount_codes") or [] if isinstance(d, dict)]
        if click:
            mapped["click_id"] = click
        elif codes and codes[0]:
            mapped["referral_code"] = codes[0]
        return Mapped(body=mapped)
    if topic == "refunds/create":
        transactions = [t for t in body.get("transactions") or [] if isinstance(t, dict)
                        and t.get("kind") == "refund" and t.get("status") == "success"]  # fmt: skip
        if body.get("id") is None or body.get("order_id") is None or not transactions:
            return Mapped(ignored="a refund without a successful refund transaction")
        currency = str(transactions[0].get("currency") or "").upper() or None
        amounts = [_amount(t.get("amount"), currency) for t in transactions]
        if any(a is None for a in amounts):
            return Mapped(body={"event_id": f"shopify:refund:{body['id']}", "type": "refund",
                                "refund_of": str(body["order_id"]), "currency": currency,
                                "amount_minor": -1})  # refused with the field named  # fmt: skip
        return Mapped(body={"event_id": f"shopify:refund:{body['id']}", "type": "refund",
                            "refund_of": str(body["order_id"]), "currency": currency,
                            "amount_minor": sum(a for a in amounts if a is not None)})  # fmt: skip
    return Mapped(ignored=f"{topic} is not a topic we track")
