"""Intake of conversion postbacks and order pixels: verify, de-duplicate, make durable, answer.

The heavy work (attribution, rewards) happens in the flusher, behind the Redis stream
"conversions", exactly like clicks. Here: the signature and its freshness, replay protection, and
idempotency on the merchant's event id — the conversion id is a UUIDv5 of (merchant, event id),
so a retry gets the same id without any lookup, and PostgreSQL's unique key stores it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

import asyncpg

from app import webhooks
from app.attribution.conversions import PIXEL_EVENT_ID_PREFIX, ConversionState
from app.attribution.fraud import is_disposable
from app.caches import MISSING, TtlCache
from app.conversion_body import ConversionFields, fingerprint, parse_conversion
from app.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from app.keyring import Keyring
from app.pipeline import keys
from app.pipeline.admission import Admission, Admitted, Outcome
from app.pipeline.event_buffer import EventBuffer, EventsLost
from app.pipeline.events import ConversionEvent, PixelEvent, encode_conversion, is_click_id
from app.pipeline.redis_client import REDIS_UNAVAILABLE, RedisClient
from app.ratelimits import Verdict
from app.security import IpAnonymizer, email_prints, hash_email
from app.services import merchant_keys
from app.services.merchant_keys import MerchantKeys
from app.storage import conversions as conversions_repo
from app.storage.rows import ConversionRow

CONVERSION_NAMESPACE = uuid.UUID("6f1c1b9e-7d0e-4b8a-9a43-0c6e2d5f8a11")
# Pixels have ids of their own kind: no postback's event id can map to a pixel's conversion.
PIXEL_NAMESPACE = uuid.UUID("0b6f3f0e-55a4-4c4e-9d0f-7c1e2a9b8d33")
_CONVERSION_NAMESPACE_BYTES = CONVERSION_NAMESPACE.bytes
_PIXEL_NAMESPACE_BYTES = PIXEL_NAMESPACE.bytes
# Event ids a postback may not use: the pixel's conversion rows carry them.
RESERVED_EVENT_ID_PREFIX = PIXEL_EVENT_ID_PREFIX
# How long Redis remembers a postback (its body's digest, and that it is queued): retries come
# within hours; later ones are still stored once by PostgreSQL's unique key.
IDEMPOTENCY_TTL_SECONDS = keys.CONVERSION_TTL_SECONDS


# A version-5 UUID's variant and version bits (RFC 9562 §5.5).
_NOT_VERSION_BITS = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_5_BITS = (0x5000 << 64) | (0x8000 << 48)


def _uuid5(namespace: bytes, name: str) -> UUID:
    """`uuid.uuid5(namespace, name)`, the same UUID in a third of the time (one per postback):
    the SHA-1 and the bits set on an integer, not through UUID(bytes=..., version=5)."""
    digest = hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest()
    return UUID(int=int.from_bytes(digest[:16]) & _NOT_VERSION_BITS | _VERSION_5_BITS)


def conversion_id(merchant_id: UUID | str, event_id: str) -> UUID:
    """The id of (merchant, event id): the merchant's id as a UUID, or as its text."""
    return _uuid5(_CONVERSION_NAMESPACE_BYTES, f"{merchant_id}:{event_id}")


def pixel_conversion_id(merchant_id: UUID, order_id: str) -> UUID:
    return _uuid5(_PIXEL_NAMESPACE_BYTES, f"{merchant_id}:{order_id}")


class SignatureRejected(Unauthorized):
    code = "invalid_signature"


@dataclass
class SecretCache:
    """Merchants' secrets (postback secret, email key), decrypted, cached a minute so a postback
    costs no query and no decryption. Unknown merchant ids are cached too (as None), and the
    cache is bounded: a flood of made-up ids costs one query each at most, and no memory beyond
    the cache's `max_entries`."""

    pool: asyncpg.Pool
    keyring: Keyring
    # Bounds the queries untrusted input can cause (the runtime's shared semaphore).
    lookups: AbstractAsyncContextManager[Any] = field(default_factory=contextlib.nullcontext)
    entries: TtlCache[UUID, MerchantKeys | None] = field(
        default_factory=lambda: TtlCache(max_entries=50_000, ttl=60.0)
    )

    async def get(self, merchant_id: UUID) -> MerchantKeys | None:
        hit = self.entries.get(merchant_id)
        if hit is not MISSING:
            return hit
        async with self.lookups:
            found = await merchant_keys.keys_of(self.pool, self.keyring, merchant_id)
        self.entries.put(merchant_id, found)
        return found


async def postback_merchant(
    secrets: SecretCache, merchant_header: str | None
) -> tuple[UUID, MerchantKeys]:
    """The merchant a postback claims to come from, and its secrets — known before the body is
    read. SignatureRejected when the header is malformed or names no merchant."""
    try:
        merchant_id = UUID(merchant_header or "")
    except ValueError:
        raise SignatureRejected(
            "missing or malformed X-Referral-Merchant header", field="x-referral-merchant"
        ) from None
    found = await secrets.get(merchant_id)
    if found is None:
        raise SignatureRejected("unknown merchant", field="x-referral-merchant")
    return merchant_id, found


def verify_postback(secret: str, signature_header: str | None, body: bytes, now: datetime) -> str:
    """The signature, unless it is not the merchant's secret's over this body just now
    (SignatureRejected with the reason). That it is used for the first time is checked with the
    batch (`receive_postback`)."""
    try:
        return webhooks.verify(secret, signature_header, body, now)
    except webhooks.InvalidSignature as exc:
        raise SignatureRejected(str(exc), field="x-referral-signature") from None


def conversion_event(
    merchant_id: UUID, email_key: bytes, body: ConversionFields, anonymize: IpAnonymizer,
    now: datetime, *, merchant: str | None = None,
) -> ConversionEvent:  # fmt: skip
    """The conversion as it travels through the stream to the flusher. `merchant`: the
    merchant's id as text, when the caller has it (formatting a UUID is Python code)."""
    ip_hash, ip_prefix = anonymize(str(body.ip)) if body.ip else (None, None)
    email = body.customer_email
    prints = email_prints(email_key, email) if email else None
    return ConversionEvent(
        id=conversion_id(merchant or merchant_id, body.event_id),
        merchant_id=merchant_id,
        event_id=body.event_id,
        type=body.type,
        occurred_at=body.occurred_at or now,
        received_at=now,
        order_id=body.order_id,
        refund_of=body.refund_of,
        customer_id=body.customer_id,
        customer_email_hash=hash_email(email_key, email) if email else None,
        customer_email_canonical=prints.canonical if prints else None,
        customer_email_near=prints.near if prints else (),
        customer_email_disposable=is_disposable(email) if email else False,
        amount_minor=body.amount_minor,
        currency=body.currency,
        click_id=body.click_id,
        referral_code=body.referral_code,
        subscription_id=body.subscription_id,
        ip_hash=bytes.fromhex(ip_hash) if ip_hash else None,
        ip_prefix=ip_prefix,
        user_agent=body.user_agent,
    )


@dataclass(frozen=True, slots=True)
class Quota:
    """A merchant's postbacks per fixed window (`RATE_LIMIT_POSTBACKS`)."""

    amount: int
    window_seconds: int

    def verdict(self, used: int, now: datetime) -> Verdict:
        """The window's state after `used` postbacks (this one included), as the other limits
        report theirs."""
        reset = self.window_seconds - int(now.timestamp()) % self.window_seconds
        return Verdict(used <= self.amount, self.amount, max(self.amount - used, 0), reset)


# Per postback: tuples (a frozen dataclass's __init__ sets each field through
# object.__setattr__, at several times the cost).
class PostbackAnswer(NamedTuple):
    body: dict[str, str]  # ConversionAccepted
    headers: list[tuple[bytes, bytes]]  # RateLimit-*


class SignedPostback(NamedTuple):
    """A postback as it arrived: the merchant it claims to come from, its signature header, its
    raw body."""

    merchant_header: str | None
    signature_header: str | None
    body: bytes


T = TypeVar("T")


def _each(failed: list[Exception | None], step: Callable[[int], T], default: T) -> list[T]:
    """`step(i)` for every postback that has not failed yet; an exception is that postback's
    answer (`failed[i]`), and the others go on."""
    out: list[T] = []
    for i, problem in enumerate(failed):
        if problem is not None:
            out.append(default)
            continue
        try:
            out.append(step(i))
        except Exception as exc:
            failed[i] = exc
            out.append(default)
    return out


async def receive_postbacks(
    secrets: SecretCache,
    buffer: EventBuffer,
    anonymize: IpAnonymizer,
    quota: Quota | None,
    postbacks: Sequence[SignedPostback],
    now: datetime,
) -> list[PostbackAnswer | Exception]:
    """Signed postbacks, each made durable once: verified, validated, then admitted together in
    one Redis call (over quota → 429, a signature used before → 401, an event id used before →
    the same id, "duplicate", or 409 if its body changed). One answer per postback, in order:
    the PostbackAnswer, or the exception (an AppError to answer) that refused it.

    Each step runs over the whole batch before the next: the same code many times in a row
    stays in the processor's caches, where one postback at a time through every step did not
    (a third less CPU per postback, measured by the load test's harness)."""
    failed: list[Exception | None] = [None] * len(postbacks)
    senders: list[_Sender] = []
    # The batch's merchants, each looked up once (a batch is mostly one merchant's).
    known: dict[str, _Sender] = {}
    for i, postback in enumerate(postbacks):
        header = postback.merchant_header or ""
        if (sender := known.get(header)) is None:
            try:
                merchant_id, found = await postback_merchant(secrets, header)
            except Exception as exc:
                failed[i] = exc
                senders.append(_NOBODY)
                continue
            sender = known[header] = _sender(buffer.stream, merchant_id, found, quota, now)
        senders.append(sender)
    signatures = _each(failed, lambda i: verify_postback(
        senders[i].webhook_secret, postbacks[i].signature_header, postbacks[i].body, now
    ), "")  # fmt: skip
    bodies = _each(failed, lambda i: parse_conversion(postbacks[i].body, now), None)
    prepared = _each(failed, lambda i: _prepare(
        buffer.stream, senders[i], _body(bodies[i]), anonymize, now, quota, signatures[i],
    ), None)  # fmt: skip
    # Queued in one go: the buffer writes them with one script call.
    admitted = [None if p is None else buffer.admit(p.encoded, p.admission) for p in prepared]
    answers: list[PostbackAnswer | Exception] = []
    for problem, ready, outcome in zip(failed, prepared, admitted, strict=True):
        if problem is not None or ready is None or outcome is None:
            answers.append(problem or RuntimeError("postback neither failed nor prepared"))
            continue
        try:
            answers.append(_answer(await _durable(outcome), ready.event_id, quota, now))
        except Exception as exc:
            answers.append(exc)
    return answers


def _body(parsed: ConversionFields | None) -> ConversionFields:
    assert parsed is not None  # a postback that failed to parse has failed: not prepared
    return parsed


async def receive_postback(
    secrets: SecretCache,
    buffer: EventBuffer,
    anonymize: IpAnonymizer,
    quota: Quota | None,
    merchant_header: str | None,
    signature_header: str | None,
    body: bytes,
    now: datetime,
) -> PostbackAnswer:
    """One postback through `receive_postbacks`; raises the AppError to answer."""
    postback = SignedPostback(merchant_header, signature_header, body)
    [answer] = await receive_postbacks(secrets, buffer, anonymize, quota, [postback], now)
    if isinstance(answer, Exception):
        raise answer
    return answer


class _Prepared(NamedTuple):
    encoded: bytes
    admission: Admission
    event_id: str


class _Sender(NamedTuple):
    """A merchant sending postbacks, with what its postbacks of one batch share (made once)."""

    merchant_id: UUID
    webhook_secret: str
    email_key: bytes
    merchant: str  # the id as text: UUID.__str__ is Python code
    window_key: str  # its postbacks' counter for the batch's window ("" without a quota)


_NOBODY = _Sender(UUID(int=0), "", b"", "", "")  # in the place of a sender not found


def _sender(
    stream: str, merchant_id: UUID, found: MerchantKeys, quota: Quota | None, now: datetime
) -> _Sender:
    merchant = str(merchant_id)
    window_key = ""
    if quota:
        window = quota.window_seconds
        window_key = keys.postback_window(stream, merchant, window, int(now.timestamp()) // window)
    return _Sender(merchant_id, found.webhook_secret, found.email_key, merchant, window_key)


def _prepare(
    stream: str, sender: _Sender, conversion: ConversionFields, anonymize: IpAnonymizer,
    now: datetime, quota: Quota | None, signature: str | None,
) -> _Prepared:  # fmt: skip
    """The stream entry and the conditions of its admission."""
    if conversion.event_id.startswith(RESERVED_EVENT_ID_PREFIX):
        raise InvalidInput(
            f"event_id must not start with {RESERVED_EVENT_ID_PREFIX!r} (reserved for the pixel)",
            field="body.event_id",
        )
    event = conversion_event(
        sender.merchant_id, sender.email_key, conversion, anonymize, now, merchant=sender.merchant
    )
    encoded = encode_conversion(event)  # before we wait: the writer only joins encoded events
    event_id = str(event.id)
    admission = Admission(
        key=keys.conversion_digest(stream, event_id),  # the id is (merchant, event id)'s
        fingerprint=hashlib.sha256(fingerprint(conversion)).hexdigest()[:32],
        ttl=IDEMPOTENCY_TTL_SECONDS,
        marker_key=keys.conversion_queued(stream, event_id),
        marker_value=sender.merchant,
        window_key=sender.window_key,
        quota=quota.amount if quota else 0,
        window_seconds=quota.window_seconds if quota else 1,
        nonce_key=keys.used_signature(stream, signature) if signature else "",
        nonce_ttl=int(webhooks.TOLERANCE.total_seconds()) * 2 if signature else 0,
    )
    return _Prepared(encoded, admission, event_id)


async def _durable(outcome: asyncio.Future[Admitted]) -> Admitted:
    """The admission's outcome once decided and, if added, durable (Redis, or the fsync'd
    spool): only then is a postback answered."""
    try:
        return await outcome
    except EventsLost:
        raise Unavailable("the conversion could not be stored: retry shortly") from None


def _answer(
    admitted: Admitted, event_id: str, quota: Quota | None, now: datetime
) -> PostbackAnswer:
    verdict = quota.verdict(admitted.window_count, now) if quota and admitted.window_count else None
    headers = verdict.headers() if verdict else []
    match admitted.outcome:
        case Outcome.LIMITED:
            raise RateLimited("too many requests: slow down (see Retry-After)",
                              {k.decode(): v.decode() for k, v in headers})  # fmt: skip
        case Outcome.REPLAYED:
            raise SignatureRejected(
                "this signature was already used (replay): sign each delivery anew",
                field="x-referral-signature",
            )
        case Outcome.CONFLICT:
            raise Conflict(
                "event_id was already used for a different conversion", field="body.event_id"
            )
    status = "duplicate" if admitted.outcome is Outcome.DUPLICATE else "accepted"
    return PostbackAnswer({"id": event_id, "status": status}, headers)


async def accept_conversion(
    buffer: EventBuffer,
    merchant_id: UUID,
    email_key: bytes,
    conversion: ConversionFields,
    anonymize: IpAnonymizer,
    now: datetime,
) -> PostbackAnswer:
    """Make a conversion that came another way (a payment provider's webhook, verified the
    provider's way) durable once, like a postback: an event id used before → the same id,
    "duplicate", or 409 if the body changed."""
    sender = _sender(buffer.stream, merchant_id, MerchantKeys("", email_key), None, now)
    ready = _prepare(buffer.stream, sender, conversion, anonymize, now, None, None)
    admitted = await _durable(buffer.admit(ready.encoded, ready.admission))
    return _answer(admitted, ready.event_id, None, now)


async def accept_pixel(
    secrets: SecretCache,
    buffer: EventBuffer,
    merchant_id: UUID,
    order_id: str,
    amount_minor: int | None,
    currency: str | None,
    visitor_cookie: str,
    now: datetime,
) -> None:
    """Queue the browser's claim on the order (when it has our cookie). NotFound for an unknown
    merchant. A lost claim is counted by the buffer; the image is shown regardless."""
    if await secrets.get(merchant_id) is None:
        raise NotFound("unknown merchant", field="query.m")
    if not is_click_id(visitor_cookie):
        return
    pixel = PixelEvent(
        id=pixel_conversion_id(merchant_id, order_id),
        merchant_id=merchant_id,
        order_id=order_id,
        visitor_id=UUID(visitor_cookie),
        amount_minor=amount_minor,
        currency=currency,
        received_at=now,
    )
    with contextlib.suppress(EventsLost):
        await buffer.add(encode_conversion(pixel))


async def read_conversion(
    pool: asyncpg.Pool, redis: RedisClient, stream: str, merchant_id: UUID, conversion: UUID
) -> ConversionRow | dict[str, Any]:
    """The stored conversion, or "queued" while it waits in the stream; NotFound otherwise
    (another merchant's conversion included)."""
    found = await conversions_repo.get_conversion(pool, merchant_id, conversion)
    if found is not None:
        return found
    if await is_queued(redis, stream, merchant_id, conversion):
        return {"id": conversion, "state": ConversionState.QUEUED.value,
                "reason": "accepted, not processed yet"}  # fmt: skip
    raise NotFound("conversion not found", field="conversion_id")


async def is_queued(redis: RedisClient, stream: str, merchant_id: UUID, conversion: UUID) -> bool:
    try:
        owner = await redis.get(keys.conversion_queued(stream, conversion))
    except REDIS_UNAVAILABLE:
        return False
    if owner is None:
        return False
    return (owner if isinstance(owner, str) else owner.decode()) == str(merchant_id)
