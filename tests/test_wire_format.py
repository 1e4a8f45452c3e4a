"""The conversions stream's wire format does not change with the code: what the previous API
wrote, this flusher reads, and what this API writes, the previous flusher read (a rolling
upgrade, either order). The previous version's payloads are written out here literally."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis

from app.pipeline.events import (
    EVENTS_FIELD,
    ConversionEvent,
    PixelEvent,
    decode_conversion,
    encode_conversion,
)
from app.settings import Settings
from app.storage.merchants import CreatedMerchant
from tests.conftest import flush, make_advocate, make_program
from tests.test_conversions import RULES, read

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

# Exactly the keys and value formats the previous version's intake put on the stream.
PREVIOUS_CONVERSION_KEYS = {
    "id", "merchant_id", "event_id", "type", "occurred_at", "received_at", "order_id",
    "refund_of", "customer_id", "customer_email_hash", "amount_minor", "currency", "click_id",
    "referral_code", "ip_hash", "ip_prefix", "user_agent",
}  # fmt: skip
# The email's prints and disposable flag for the fraud rules, and a renewal's subscription:
# absent from earlier events.
ADDED_CONVERSION_KEYS = {
    "customer_email_canonical", "customer_email_near", "customer_email_disposable",
    "subscription_id",
}  # fmt: skip
PREVIOUS_PIXEL_KEYS = {
    "id", "type", "merchant_id", "order_id", "visitor_id", "amount_minor", "currency",
    "received_at",
}  # fmt: skip


def test_this_version_writes_what_the_previous_flusher_reads() -> None:
    conversion = ConversionEvent(
        id=uuid.uuid4(), merchant_id=uuid.uuid4(), event_id="o-1", type="purchase",
        occurred_at=NOW, received_at=NOW, order_id="1", customer_email_hash=b"\x01" * 32,
        amount_minor=5000, currency="EUR", ip_hash=b"\x02" * 16, ip_prefix="203.0.113.0/24",
    )  # fmt: skip
    wire = orjson.loads(encode_conversion(conversion))
    # Keys added since are optional and ignored by the previous flusher (it reads by name).
    assert set(wire) == PREVIOUS_CONVERSION_KEYS | ADDED_CONVERSION_KEYS
    assert wire["id"] == str(conversion.id) and wire["occurred_at"] == NOW.isoformat()
    assert wire["customer_email_hash"] == "01" * 32 and wire["ip_hash"] == "02" * 16
    pixel = PixelEvent(uuid.uuid4(), uuid.uuid4(), "1", uuid.uuid4(), 5000, "EUR", NOW)
    pixel_wire = orjson.loads(encode_conversion(pixel))
    assert set(pixel_wire) == PREVIOUS_PIXEL_KEYS and pixel_wire["type"] == "pixel"
    assert pixel_wire["visitor_id"] == pixel.visitor_id.hex  # the cookie's 32 hex digits
    assert decode_conversion(wire) == conversion and decode_conversion(pixel_wire) == pixel


async def test_this_flusher_processes_what_the_previous_api_wrote(
    client: httpx.AsyncClient, merchant: CreatedMerchant, settings: Settings, redis: Redis,
    db: asyncpg.Pool,
) -> None:  # fmt: skip
    program = await make_program(client, merchant, rules=RULES)
    anna = await make_advocate(client, merchant, program, "cust-anna")
    conversion_id = str(uuid.uuid4())
    previous = {  # as the previous version's conversion_event() built it
        "id": conversion_id, "merchant_id": str(merchant.id), "event_id": "o-old",
        "type": "purchase", "occurred_at": NOW.isoformat(), "received_at": NOW.isoformat(),
        "order_id": "old-1", "refund_of": None, "customer_id": "cust-ben",
        "customer_email_hash": None, "amount_minor": 5000, "currency": "EUR", "click_id": None,
        "referral_code": anna["referral_code"], "ip_hash": None, "ip_prefix": None,
        "user_agent": None,
    }  # fmt: skip
    await redis.xadd(settings.conversion_stream, {EVENTS_FIELD: orjson.dumps([previous])})
    await flush(settings)
    outcome = await read(client, merchant, conversion_id)
    assert outcome["state"] == "attributed" and len(outcome["rewards"]) == 2
