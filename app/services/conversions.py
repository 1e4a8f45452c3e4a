"""Accepting conversion postbacks: verify, de-duplicate, make durable, answer.

The heavy work (attribution, rewards) happens in the flusher, behind the Redis stream
"conversions", exactly like clicks. Here: the signature and its freshness, replay protection, and
idempotency on the merchant's event id — the conversion id is a UUIDv5 of (merchant, event id),
so a retry gets the same id without any lookup, and PostgreSQL's unique key stores it once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from app import webhooks
from app.errors import Conflict, InvalidInput, Unauthorized, Unavailable
from app.schemas import ConversionIn
from app.security import IpAnonymizer, hash_email
from app.storage import redis_keys
from app.storage.event_buffer import EventBuffer, EventsLost
from app.storage.redis_client import REDIS_UNAVAILABLE, RedisClient

CONVERSION_NAMESPACE = uuid.UUID("6f1c1b9e-7d0e-4b8a-9a43-0c6e2d5f8a11")
# Pixels have ids of their own kind: no postback's event id can map to a pixel's conversion.
PIXEL_NAMESPACE = uuid.UUID("0b6f3f0e-55a4-4c4e-9d0f-7c1e2a9b8d33")
# Event ids a postback may not use: the pixel's conversion rows carry them.
RESERVED_EVENT_ID_PREFIX = "pixel:"
# How long Redis remembers a postback (its body's digest, and that it is queued): retries come
# within hours; later ones are still stored once by PostgreSQL's unique key.
IDEMPOTENCY_TTL_SECONDS = redis_keys.CONVERSION_TTL_SECONDS


def conversion_id(merchant_id: UUID, event_id: str) -> UUID:
    return uuid.uuid5(CONVERSION_NAMESPACE, f"{merchant_id}:{event_id}")


def pixel_conversion_id(merchant_id: UUID, order_id: str) -> UUID:
    return uuid.uuid5(PIXEL_NAMESPACE, f"{merchant_id}:{order_id}")


class SignatureRejected(Unauthorized):
    code = "invalid_signature"


@dataclass
class SecretCache:
    """Webhook secrets by merchant, cached a minute so a postback costs no query. Unknown
    merchant ids are cached too (as None), and the cache is bounded: a flood of made-up ids
    costs one query each at most, and no memory beyond `max_entries`."""

    pool: asyncpg.Pool
    lookups: asyncio.Semaphore | None = None  # bounds the queries untrusted input can cause
    max_entries: int = 50_000
    entries: OrderedDict[UUID, tuple[float, str | None]] = field(default_factory=OrderedDict)

    async def get(self, merchant_id: UUID) -> str | None:
        hit = self.entries.get(merchant_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        if self.lookups is None:
            secret = await self._fetch(merchant_id)
        else:
            async with self.lookups:
                secret = await self._fetch(merchant_id)
        self.entries[merchant_id] = (time.monotonic() + 60, secret)
        self.entries.move_to_end(merchant_id)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return secret

    async def _fetch(self, merchant_id: UUID) -> str | None:
        secret: str | None = await self.pool.fetchval(
            "SELECT webhook_secret FROM merchants WHERE id = $1", merchant_id
        )
        return secret


async def postback_merchant(secrets: SecretCache, merchant_header: str | None) -> tuple[UUID, str]:
    """The merchant a postback claims to come from, and its secret — known before the body is
    read. SignatureRejected when the header is malformed or names no merchant."""
    try:
        merchant_id = UUID(merchant_header or "")
    except ValueError:
        raise SignatureRejected(
            "missing or malformed X-Referral-Merchant header", field="x-referral-merchant"
        ) from None
    secret = await secrets.get(merchant_id)
    if secret is None:
        raise SignatureRejected("unknown merchant", field="x-referral-merchant")
    return merchant_id, secret


async def verify_postback(
    redis: RedisClient, secret: str, signature_header: str | None, body: bytes, now: datetime
) -> None:
    """SignatureRejected with the reason, unless the merchant's secret signed this body just
    now, for the first time."""
    try:
        signature = webhooks.verify(secret, signature_header, body, now)
    except webhooks.InvalidSignature as exc:
        raise SignatureRejected(str(exc), field="x-referral-signature") from None
    try:
        first_use = await redis.set(
            f"webhook-signature:{signature}", 1, nx=True, ex=int(webhooks.TOLERANCE.seconds) * 2
        )
    except REDIS_UNAVAILABLE:
        first_use = True  # the timestamp tolerance still bounds replays while Redis is away
    if not first_use:
        raise SignatureRejected(
            "this signature was already used (replay): sign each delivery anew",
            field="x-referral-signature",
        )


def conversion_event(
    merchant_id: UUID, body: ConversionIn, anonymize: IpAnonymizer, now: datetime
) -> dict[str, Any]:
    """The conversion as it travels through the stream to the flusher."""
    ip_hash, ip_prefix = anonymize(str(body.ip)) if body.ip else (None, None)
    return {
        "id": str(conversion_id(merchant_id, body.event_id)),
        "merchant_id": str(merchant_id),
        "event_id": body.event_id,
        "type": body.type,
        "occurred_at": (body.occurred_at or now).isoformat(),
        "received_at": now.isoformat(),
        "order_id": body.order_id,
        "refund_of": body.refund_of,
        "customer_id": body.customer_id,
        "customer_email_hash": hash_email(body.customer_email).hex()
        if body.customer_email
        else None,
        "amount_minor": body.amount_minor,
        "currency": body.currency,
        "click_id": body.click_id,
        "referral_code": body.referral_code,
        "ip_hash": ip_hash,
        "ip_prefix": ip_prefix,
        "user_agent": body.user_agent,
    }


async def accept_conversion(
    redis: RedisClient,
    buffer: EventBuffer,
    merchant_id: UUID,
    body: ConversionIn,
    anonymize: IpAnonymizer,
    now: datetime,
) -> tuple[UUID, bool]:
    """Make the conversion durable (once). Returns (conversion id, duplicate)."""
    if body.event_id.startswith(RESERVED_EVENT_ID_PREFIX):
        raise InvalidInput(
            f"event_id must not start with {RESERVED_EVENT_ID_PREFIX!r} (reserved for the pixel)",
            field="body.event_id",
        )
    event = conversion_event(merchant_id, body, anonymize, now)
    encoded = orjson.dumps(event)  # before we answer: the writer only joins encoded events
    digest = hashlib.sha256(body.model_dump_json(exclude={"occurred_at"}).encode()).hexdigest()[:32]
    key = redis_keys.conversion_digest(event["id"])  # the id is derived from (merchant, event id)
    try:
        seen = await redis.get(key)
    except REDIS_UNAVAILABLE:
        seen = None  # PostgreSQL's unique key still stores it once
    if seen is not None:
        if seen.decode() != digest:
            raise Conflict(
                "event_id was already used for a different conversion", field="body.event_id"
            )
        return UUID(event["id"]), True
    try:
        await buffer.add(encoded)  # durable (Redis, or the fsync'd spool) before we answer
    except EventsLost:
        raise Unavailable("the conversion could not be stored: retry shortly") from None
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.set(key, digest, ex=IDEMPOTENCY_TTL_SECONDS)
            pipe.set(
                redis_keys.conversion_queued(event["id"]),
                str(merchant_id),
                ex=IDEMPOTENCY_TTL_SECONDS,
            )
            await pipe.execute()
    except REDIS_UNAVAILABLE:
        pass
    return UUID(event["id"]), False


async def is_queued(redis: RedisClient, merchant_id: UUID, conversion: UUID) -> bool:
    try:
        owner = await redis.get(redis_keys.conversion_queued(conversion))
    except REDIS_UNAVAILABLE:
        return False
    return owner is not None and owner.decode() == str(merchant_id)
