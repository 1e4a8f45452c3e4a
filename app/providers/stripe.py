"""Stripe webhooks → our conversions. Verified with the official `stripe` library
(`WebhookSignature.verify_header`: HMAC-SHA256 over "<t>.<payload>", 5-minute tolerance).

- `checkout.session.completed` (and `checkout.session.async_payment_succeeded`, for payments
  that settle later) → a purchase: the order is its PaymentIntent (or, for a subscription, its
  first invoice), the customer its Stripe customer and email; a subscription checkout carries
  the subscription id, so its later invoices are renewals.
- `invoice.paid` for a subscription's later cycle → a renewal (the first invoice is the
  checkout's purchase).
- `charge.refunded` → a refund of the charge's invoice or PaymentIntent, for the amount this
  event refunded (the difference with `previous_attributes.amount_refunded`).
- The click id comes from `client_reference_id` (when it is one) or `metadata.rcid`; the
  referral code from `metadata.referral_code` (or `client_reference_id` when it is not a click
  id). Everything else is acknowledged and ignored, with the reason.
Idempotent on Stripe's event id (`stripe:<evt_…>`), retries included.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import stripe

from app.pipeline.events import is_click_id
from app.providers import Mapped, ProviderSignatureError, as_dict

TOLERANCE_SECONDS = 300


def verify(payload: bytes, header: str | None, secret: str) -> dict[str, Any]:
    """The event, once its `Stripe-Signature` is Stripe's; ProviderSignatureError otherwise."""
    if not header:
        raise ProviderSignatureError("missing Stripe-Signature header")
    try:
        stripe.WebhookSignature.verify_header(payload.decode("utf-8", "replace"), header,
                                              secret, tolerance=TOLERANCE_SECONDS)  # fmt: skip
    except stripe.SignatureVerificationError as exc:
        raise ProviderSignatureError(f"Stripe signature refused: {exc.user_message or exc}"
                                     ) from None  # fmt: skip
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProviderSignatureError("the signed payload is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        raise ProviderSignatureError("the signed payload is not a Stripe event")
    return event


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _evidence(obj: dict[str, Any]) -> dict[str, str]:
    meta = as_dict(obj.get("metadata"))
    reference = _text(obj.get("client_reference_id"))
    click = _text(meta.get("rcid")) or _text(meta.get("click_id"))
    code = _text(meta.get("referral_code"))
    if reference and not click and is_click_id(reference.lower()):
        click = reference.lower()
    elif reference and not code and not is_click_id(reference.lower()):
        code = reference
    found = {}
    if click:
        found["click_id"] = click
    if code:
        found["referral_code"] = code
    return found


def _when(event: dict[str, Any]) -> str | None:
    created = event.get("created")
    if isinstance(created, int) and not isinstance(created, bool):
        return datetime.fromtimestamp(created, UTC).isoformat()
    return None


def _customer(obj: dict[str, Any], email: Any) -> dict[str, str]:
    found = {}
    if _text(obj.get("customer")):
        found["customer_id"] = obj["customer"]
    if _text(email):
        found["customer_email"] = email
    return found


def map_event(event: dict[str, Any]) -> Mapped:
    kind = event.get("type")
    obj = event["data"].get("object")
    if not isinstance(obj, dict) or not _text(event.get("id")):
        return Mapped(ignored="not a Stripe event with an object")
    base = {"event_id": f"stripe:{event['id']}"}
    if _when(event):
        base["occurred_at"] = _when(event)  # type: ignore[assignment]
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        if obj.get("payment_status") not in ("paid", "no_payment_required"):
            return Mapped(ignored="not paid yet: checkout.session.async_payment_succeeded "
                                  "follows when it is")  # fmt: skip
        order = _text(obj.get("payment_intent")) or _text(obj.get("invoice")) or obj.get("id")
        details = as_dict(obj.get("customer_details"))
        body = {**base, "type": "purchase", "order_id": order,
                "amount_minor": obj.get("amount_total"),
                "currency": str(obj.get("currency") or "").upper() or None,
                **_customer(obj, details.get("email")), **_evidence(obj)}  # fmt: skip
        if _text(obj.get("subscription")):
            body["subscription_id"] = obj["subscription"]
        return Mapped(body=body)
    if kind == "invoice.paid":
        if obj.get("billing_reason") != "subscription_cycle":
            return Mapped(ignored="only a subscription's later invoices are renewals (the first "
                                  "is its checkout's purchase)")  # fmt: skip
        parent = as_dict(as_dict(obj.get("parent")).get("subscription_details"))
        subscription = _text(obj.get("subscription")) or _text(parent.get("subscription"))
        if not subscription:
            return Mapped(ignored="an invoice without a subscription")
        return Mapped(body={**base, "type": "renewal", "order_id": obj.get("id"),
                            "subscription_id": subscription,
                            "amount_minor": obj.get("amount_paid"),
                            "currency": str(obj.get("currency") or "").upper() or None,
                            **_customer(obj, obj.get("customer_email"))})  # fmt: skip
    if kind == "charge.refunded":
        before = as_dict(event["data"].get("previous_attributes")).get("amount_refunded", 0)
        refunded = obj.get("amount_refunded")
        if not isinstance(refunded, int) or not isinstance(before, int) or refunded <= before:
            return Mapped(ignored="no new amount refunded")
        order = _text(obj.get("invoice")) or _text(obj.get("payment_intent")) or obj.get("id")
        currency = str(obj.get("currency") or "").upper() or None
        return Mapped(body={**base, "type": "refund", "refund_of": order,
                            "amount_minor": refunded - before, "currency": currency})  # fmt: skip
    return Mapped(ignored=f"{kind} is not a conversion we track")
