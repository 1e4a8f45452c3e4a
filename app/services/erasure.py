"""Erasure (GDPR art. 17, CCPA): a customer (by the merchant's customer id or email) or an
advocate loses their personal data everywhere we hold it, and the books stay exactly as they were.

- Before erasing, what was queued until now is stored: the streams are drained up to their
  newest entry (a flusher does it in moments; 503 if not within `DRAIN_TIMEOUT`), so no event
  carrying the person lands after the erasure.
- In one transaction: conversions lose customer id (→ a pseudonym), email hashes, IP data and
  user agent, and their browser id becomes a keyed pseudonym (the same one everywhere, so that
  distinct counts hold); the person's clicks lose IP data, user agent and referer; their rewards'
  customer id becomes the pseudonym; order pixels and dead letters follow; recorded request
  bodies holding the person's values are blanked in the audit trail; the event feed's copies
  of the ids take the pseudonym (webhooks already delivered are the merchant's copy). An
  advocate loses name,
  emails, payout details and their own id (→ the pseudonym), gets a meaningless referral code,
  their links stop redirecting, and their page tokens are revoked.
- Kept: amounts, currencies, states, ledger entries, order ids, times, the attribution and fraud
  reasons — the accounting a merchant must keep — so statistics and balances are unchanged.
- Idempotent: the same request again changes nothing more and answers the first record. What is
  recorded of the subject is an HMAC under the merchant's key, never the value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from app.codes import new_referral_code
from app.errors import InvalidInput, NotFound, Unavailable
from app.pipeline import keys as redis_keys
from app.pipeline.redis_client import REDIS_UNAVAILABLE, RedisClient
from app.security import email_prints, hash_email
from app.services import links as links_service
from app.services import merchant_keys
from app.services.tx import transaction
from app.settings import Settings
from app.storage import advocate_tokens as tokens_repo
from app.storage import erasure as repo

DRAIN_TIMEOUT = 10.0


def _mac(key: bytes, text: str) -> bytes:
    return hmac.digest(key, text.encode(), hashlib.sha256)


def _visitor_pseudonym(key: bytes, visitor: UUID) -> UUID:
    return UUID(bytes=hmac.digest(key, b"visitor:" + visitor.bytes, hashlib.sha256)[:16])


async def drain(redis: RedisClient, streams: list[str], wait: float = DRAIN_TIMEOUT) -> None:
    """Wait until every entry the streams held when called has been stored (flushers delete
    what they stored). Unavailable when Redis is away or the flushers do not catch up."""
    try:
        newest: dict[str, Any] = {}
        for stream in streams:
            last = await redis.xrevrange(stream, count=1)
            if last:
                newest[stream] = last[0][0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while newest:
            for stream, entry in list(newest.items()):
                if not await redis.xrange(stream, "-", entry, count=1):
                    del newest[stream]
            if newest:
                if loop.time() > deadline:
                    raise Unavailable("events queued before the erasure are not stored yet "
                                      "(are the flushers running?): retry shortly")  # fmt: skip
                await asyncio.sleep(0.05)
    except REDIS_UNAVAILABLE:
        raise Unavailable("Redis is unreachable: the erasure cannot see queued events; "
                          "retry shortly") from None  # fmt: skip


async def erase_customer(
    pool: asyncpg.Pool, redis: RedisClient, settings: Settings, merchant_id: UUID,
    customer_id: str | None, email: str | None,
) -> dict[str, Any]:  # fmt: skip
    if customer_id is None and email is None:
        raise InvalidInput("name the customer: customer_id or customer_email",
                           field="body.customer_id")  # fmt: skip
    await drain(redis, settings.event_streams)
    async with transaction(pool) as conn:
        keys = await merchant_keys.keys_of(conn, settings.keyring, merchant_id)
        assert keys is not None  # the merchant authenticated
        key = keys.email_key
        email_hash = hash_email(key, email) if email else None
        subject = f"customer:{customer_id or ''}:{email_hash.hex() if email_hash else ''}"
        who = customer_id if customer_id else email_hash.hex() if email_hash else ""
        pseudonym = "erased:" + _mac(key, f"customer:{who}").hex()[:20]
        found = await repo.customer_conversions(conn, merchant_id, customer_id, email_hash)
        conversions = [r["id"] for r in found]
        click_ids = list({c for r in found for c in (r["click_id"], r["attributed_click_id"])
                          if c is not None})  # fmt: skip
        real = {r["visitor_id"] for r in found if r["visitor_id"]}
        real |= set(await repo.click_visitors(conn, merchant_id, click_ids))
        visitors = {v: _visitor_pseudonym(key, v) for v in real}
        changed = {
            "conversions": await repo.scrub_conversions(conn, conversions, pseudonym, visitors),
            "rewards": await repo.scrub_customer_rewards(
                conn, merchant_id, conversions, customer_id, pseudonym
            ),
            "clicks": await repo.scrub_clicks(conn, merchant_id, click_ids, visitors),
            "order_pixels": await repo.scrub_pixels(conn, merchant_id, visitors),
        }
        replacements = [(v.hex, p.hex) for v, p in visitors.items()]
        values = [v for v in (customer_id, email, email.strip().lower() if email else None) if v]
        if customer_id:
            replacements.append((_json(customer_id), _json(pseudonym)))
        if email and email_hash:
            prints = email_prints(key, email)
            for h in (email_hash, prints.canonical, *prints.near):
                replacements.append((h.hex(), "0" * len(h.hex())))
        changed["dead_letters"] = await repo.scrub_dead_letters(conn, replacements)
        changed["events"] = await repo.scrub_customer_events(conn, merchant_id, customer_id,
                                                            conversions, pseudonym)  # fmt: skip
        changed["audit_log"] = await repo.scrub_audit(conn, merchant_id, values, None, pseudonym)
        record = await repo.record(conn, merchant_id, "customer", _mac(key, subject), pseudonym,
                                   changed)  # fmt: skip
    await _forget_in_redis(redis, settings.conversion_stream, conversions)
    return {**record, "changed": changed}


async def erase_advocate(
    pool: asyncpg.Pool, redis: RedisClient, settings: Settings, merchant_id: UUID,
    advocate_id: UUID,
) -> dict[str, Any]:  # fmt: skip
    await drain(redis, settings.event_streams)
    codes: list[str] = []
    queued_at = None
    async with transaction(pool) as conn:
        advocate = await repo.advocate_for_erasure(conn, merchant_id, advocate_id)
        if advocate is None:
            raise NotFound("advocate not found", field="body.advocate_id")
        keys = await merchant_keys.keys_of(conn, settings.keyring, merchant_id)
        assert keys is not None
        pseudonym = "erased:" + _mac(keys.email_key, f"advocate:{advocate_id}").hex()[:20]
        values = [v for v in (advocate["external_id"], advocate["name"], advocate["payout_email"],
                              advocate["payout_name"], advocate["payout_reference"])
                  if v and v != pseudonym]  # fmt: skip
        code = new_referral_code("")
        changed = {
            "advocates": await repo.scrub_advocate(conn, merchant_id, advocate_id, pseudonym, code),
            "events": await repo.scrub_advocate_events(
                conn, merchant_id, advocate_id, pseudonym, code
            ),
        }
        codes = await repo.deactivate_links(conn, merchant_id, advocate_id)
        changed["links"] = len(codes)
        changed["advocate_tokens"] = await tokens_repo.revoke_all(conn, merchant_id, advocate_id)
        changed["audit_log"] = await repo.scrub_audit(conn, merchant_id, values, str(advocate_id),
                                                      pseudonym)  # fmt: skip
        record = await repo.record(conn, merchant_id, "advocate",
                                   _mac(keys.email_key, f"advocate:{advocate_id}"), pseudonym,
                                   changed)  # fmt: skip
        if codes:
            queued_at = await links_service.queue_link_changes(conn, codes)
    if queued_at is not None:
        # Committed: every API process stops redirecting the advocate's links.
        await links_service.deliver(pool, redis, codes, queued_at)
    return {**record, "changed": changed}


def _json(value: str) -> str:
    return orjson.dumps(value).decode()


async def _forget_in_redis(redis: RedisClient, stream: str, conversions: list[UUID]) -> None:
    """Idempotency records of the erased conversions (digests of their bodies) go too."""
    if not conversions:
        return
    names = [redis_keys.conversion_digest(stream, c) for c in conversions]
    names += [redis_keys.conversion_queued(stream, c) for c in conversions]
    # All in the conversion stream's hash slot; if Redis is away, they expire within a day.
    with contextlib.suppress(*REDIS_UNAVAILABLE):
        await redis.delete(*names)
