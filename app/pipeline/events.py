"""The events of the streams, and their one codec: clicks (what the redirect writes to Redis and
the flusher writes to PostgreSQL), conversions and pixel claims.

A click travels as a compact JSON array (field order below), many clicks per Redis stream entry,
so that the hot path pays for one Redis round trip per batch of concurrent requests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import orjson

# Field positions inside one encoded click.
CLICK_ID, LINK_ID, VISITOR_ID, IP_HASH, IP_PREFIX, USER_AGENT, REFERER, PURPOSE, METHOD = range(9)
# Present only when the click URL had a query (what is passed on to the shop); absent in clicks
# of earlier versions.
QUERY = 9
EVENTS_FIELD = b"e"


class _Entropy:
    """Random hex digits from the OS's CSPRNG, drawn 6.5 KB at a time.

    One getrandom() call per 128 clicks instead of one per click: a system call costs more than
    the rest of making the ids. Refilled in a forked child, so two processes never share digits.
    """

    __slots__ = ("digits", "used")
    digits: str
    used: int
    DRAW = 128 * 26  # bytes: 20 + 32 hex digits per click

    def __init__(self) -> None:
        self.reset()

    def take52(self) -> str:
        used = self.used
        if used >= len(self.digits):
            self.digits = os.urandom(self.DRAW).hex()
            used = 0
        self.used = used + 52
        return self.digits[used : used + 52]

    def reset(self) -> None:
        self.digits = ""
        self.used = 0


_entropy = _Entropy()
os.register_at_fork(after_in_child=_entropy.reset)


def new_click_and_visitor_ids() -> tuple[str, str]:
    """A click id and a fresh visitor id (hot path).

    The click id is 32 hex digits: 48 bits of Unix milliseconds, then 80 random bits —
    time-ordered (good for the index) and unguessable (a click id in a URL must not be forgeable).
    The timestamp inside is the click's time, so a retried delivery maps to the same row.
    The visitor id is 128 random bits.
    """
    random = _entropy.take52()
    return (time.time_ns() // 1_000_000).to_bytes(6).hex() + random[:20], random[20:]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def click_time(click_id: str) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(click_id[:12], 16))


_HEX_DIGITS = "0123456789abcdefABCDEF"


def parse_click_id(value: str, now: datetime, earliest: datetime, skew: timedelta) -> str:
    """A click id as the shop passed it back (dashes and case tolerated), as 32 lower-case hex
    digits, or ValueError: not our shape, or a time inside it that no click of ours can have
    (before `earliest`, or beyond `now + skew`), which PostgreSQL could not store either."""
    compact = value.replace("-", "").lower()
    if not is_click_id(compact):
        raise ValueError("must be the 32 hex digit click id from the rcid parameter")
    millis = int(compact[:12], 16)
    if not earliest.timestamp() * 1000 <= millis <= (now + skew).timestamp() * 1000:
        raise ValueError("is not a click id of ours: the time inside it is out of range")
    return compact


def is_click_id(value: str) -> bool:
    """32 hex digits, the shape of our click and visitor ids; nothing else (int(…, 16) would also
    take a sign, underscores, spaces and a 0x prefix)."""
    return len(value) == 32 and not value.strip(_HEX_DIGITS)


# -- Conversions and pixels: the "conversions" stream ------------------------------------------
#
# Each travels as one JSON object (many per stream entry). The keys and value formats below are
# the wire format shared by every version of the API and the flusher (a rolling upgrade reads
# either way): ids as UUID strings, times as ISO 8601, hashes as hex, a pixel marked
# "type": "pixel".

ConversionType = Literal["signup", "purchase", "refund", "renewal"]


@dataclass(slots=True)  # not frozen: one is built per postback, and a frozen one's __init__
class ConversionEvent:  # sets each of its 21 fields through object.__setattr__
    """A signed postback, as accepted (treated as immutable: `dataclasses.replace` makes
    another)."""

    id: UUID
    merchant_id: UUID
    event_id: str
    type: ConversionType
    occurred_at: datetime
    received_at: datetime
    order_id: str | None = None
    refund_of: str | None = None
    customer_id: str | None = None
    customer_email_hash: bytes | None = None
    # The email's prints for the fraud rules (app/security.py), and whether its domain is a
    # disposable-mailbox one. Absent from events of earlier versions (decoded as none).
    customer_email_canonical: bytes | None = None
    customer_email_near: tuple[bytes, ...] = ()
    customer_email_disposable: bool = False
    amount_minor: int | None = None
    currency: str | None = None
    click_id: str | None = None
    referral_code: str | None = None
    subscription_id: str | None = None  # absent from events of earlier versions
    ip_hash: bytes | None = None
    ip_prefix: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class PixelEvent:
    """A browser's claim on an order, from the order-confirmation pixel."""

    id: UUID
    merchant_id: UUID
    order_id: str
    visitor_id: UUID
    amount_minor: int | None
    currency: str | None
    received_at: datetime


StreamedConversion = ConversionEvent | PixelEvent


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _unhex(value: str | None) -> bytes | None:
    return bytes.fromhex(value) if value else None


def encode_conversion(event: StreamedConversion) -> bytes:
    """One JSON object, in the wire format (see above)."""
    if isinstance(event, PixelEvent):
        return orjson.dumps(
            {
                "id": str(event.id),
                "type": "pixel",
                "merchant_id": str(event.merchant_id),
                "order_id": event.order_id,
                "visitor_id": event.visitor_id.hex,
                "amount_minor": event.amount_minor,
                "currency": event.currency,
                "received_at": event.received_at.isoformat(),
            }
        )
    # UUIDs and times as orjson writes them: the same text as str() and isoformat(), faster.
    return orjson.dumps(
        {
            "id": event.id,
            "merchant_id": event.merchant_id,
            "event_id": event.event_id,
            "type": event.type,
            "occurred_at": event.occurred_at,
            "received_at": event.received_at,
            "order_id": event.order_id,
            "refund_of": event.refund_of,
            "customer_id": event.customer_id,
            "customer_email_hash": _hex(event.customer_email_hash),
            "customer_email_canonical": _hex(event.customer_email_canonical),
            "customer_email_near": [h.hex() for h in event.customer_email_near],
            "customer_email_disposable": event.customer_email_disposable,
            "amount_minor": event.amount_minor,
            "currency": event.currency,
            "click_id": event.click_id,
            "referral_code": event.referral_code,
            "subscription_id": event.subscription_id,
            "ip_hash": _hex(event.ip_hash),
            "ip_prefix": event.ip_prefix,
            "user_agent": event.user_agent,
        }
    )


def decode_conversion(raw: dict[str, Any]) -> StreamedConversion:
    """A decoded stream value back into its type; ValueError/KeyError/TypeError when malformed."""
    if raw["type"] == "pixel":
        return PixelEvent(
            id=UUID(raw["id"]),
            merchant_id=UUID(raw["merchant_id"]),
            order_id=raw["order_id"],
            visitor_id=UUID(raw["visitor_id"]),
            amount_minor=raw.get("amount_minor"),
            currency=raw.get("currency"),
            received_at=datetime.fromisoformat(raw["received_at"]),
        )
    if raw["type"] not in ("signup", "purchase", "refund", "renewal"):
        raise ValueError(f"unknown conversion type {raw['type']!r}")
    return ConversionEvent(
        id=UUID(raw["id"]),
        merchant_id=UUID(raw["merchant_id"]),
        event_id=raw["event_id"],
        type=raw["type"],
        occurred_at=datetime.fromisoformat(raw["occurred_at"]),
        received_at=datetime.fromisoformat(raw["received_at"]),
        order_id=raw.get("order_id"),
        refund_of=raw.get("refund_of"),
        customer_id=raw.get("customer_id"),
        customer_email_hash=_unhex(raw.get("customer_email_hash")),
        customer_email_canonical=_unhex(raw.get("customer_email_canonical")),
        customer_email_near=tuple(bytes.fromhex(h) for h in raw.get("customer_email_near") or ()),
        customer_email_disposable=bool(raw.get("customer_email_disposable")),
        amount_minor=raw.get("amount_minor"),
        currency=raw.get("currency"),
        click_id=raw.get("click_id"),
        referral_code=raw.get("referral_code"),
        subscription_id=raw.get("subscription_id"),
        ip_hash=_unhex(raw.get("ip_hash")),
        ip_prefix=raw.get("ip_prefix"),
        user_agent=raw.get("user_agent"),
    )
