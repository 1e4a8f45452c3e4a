"""A conversion's states and the words that explain them: the reasons stored on each conversion,
for a person to read. Pure: texts from facts, no I/O."""

from __future__ import annotations

from enum import StrEnum

from app.attribution.model import Method


class ConversionState(StrEnum):
    ATTRIBUTED = "attributed"
    UNATTRIBUTED = "unattributed"
    REFUNDED = "refunded"
    REFUND_UNMATCHED = "refund_unmatched"
    REFUND_REFUSED = "refund_refused"
    # An unverified order (pixel only) once the signed postback for it arrived.
    SUPERSEDED = "superseded"
    # Not stored yet: accepted (202) and waiting in the stream.
    QUEUED = "queued"


_METHOD_WORDS: dict[Method, str] = {
    "referral_code": "referral code",
    "click_id": "click id",
    "cookie": "cookie",
    "subscription": "the subscription's first purchase",
}

# The event id of an order known from the pixel alone; no postback may use the prefix.
PIXEL_EVENT_ID_PREFIX = "pixel:"

SUPERSEDED_REASON = "a signed postback for this order arrived"
NO_RULES = "the program the evidence points at has no reward rules"
SUBSCRIPTION_NOT_REFERRED = "the subscription's first purchase was not referred"


def no_subscription_purchase(subscription_id: str) -> str:
    return (f"no signed purchase with subscription_id {subscription_id!r} has been received: "
            "a renewal is credited through its subscription's first purchase")  # fmt: skip


UNVERIFIED_ATTRIBUTED = (
    "unverified (pixel only): attributed by cookie, no reward until a signed postback"
)


def attributed_reason(
    method: Method, by_pixel: bool, no_reward: str | None, fraud_note: str = ""
) -> str:
    """Why it was attributed; why it earns nothing, if so; and what the fraud rules did."""
    reason = f"attributed by {_METHOD_WORDS[method]}"
    if method == "cookie" and by_pixel:
        reason = "attributed by cookie (the order pixel's browser)"
    if no_reward:
        reason = f"{reason}; no reward: {no_reward}"
    return f"{reason}; {fraud_note}" if fraud_note else reason


def unverified_reason(why_not: str) -> str:
    return f"unverified (pixel only): {why_not}"


def no_purchase_yet(order_id: str) -> str:
    return (
        f"no signed purchase with order_id {order_id!r} has been received yet: the refund is"
        " applied when it arrives"
    )


def refund_applied(settlement_reason: str, reversed_minor: int) -> str:
    return f"{settlement_reason}: {reversed_minor} of rewards reversed"
