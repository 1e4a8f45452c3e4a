"""Outgoing webhooks in the Standard Webhooks format, and the event feed.

- Events are announced in the transaction of their change (`announce`, and the ledger's own
  trigger for reward moves: migrations/0012_webhooks.sql). Each matching enabled endpoint gets a
  delivery row in that same transaction: the outbox. Nothing unannounced is ever sent, and
  nothing announced is lost if any process dies.
- The delivery worker (`referral webhooks`; several may run) claims due deliveries with SKIP
  LOCKED and a lease, signs them with the `standardwebhooks` library (`webhook-id` is the
  event's, the same on every retry), POSTs them with a timeout, without following redirects,
  reading at most `EXCERPT_BYTES` of the answer, and records every attempt. A 2xx is delivered;
  anything else is retried on `WEBHOOK_RETRY_SECONDS` (5 s … 10 h, about 27 h in all) with
  jitter, then given up. An endpoint failing for `WEBHOOK_DISABLE_AFTER_HOURS` is disabled, and
  an `endpoint.disabled` event is recorded.
- No delivery to loopback, link-local, private or otherwise non-public addresses (checked when
  the endpoint is saved and again before each send) unless `WEBHOOK_ALLOW_PRIVATE` is set.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import random
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import httpx
import orjson
from standardwebhooks.webhooks import Webhook

from app.errors import Conflict, InvalidInput, NotFound
from app.event_types import EVENT_TYPES
from app.keyring import Keyring
from app.services.tx import transaction
from app.settings import Settings
from app.storage import events as events_repo
from app.storage import webhooks as repo

EXCERPT_BYTES = 1024
USER_AGENT = "referral-webhooks/1"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def webhook_id(event_id: UUID) -> str:
    return "msg_" + event_id.hex


# -- Where we may deliver ------------------------------------------------------------------------


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def refusal(url: str, allow_private: bool) -> str | None:
    """Why we will not deliver to this URL (None: we will). A host that does not resolve is
    refused at send time, not when saved (DNS may come later)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "the URL must be http(s) with a host"
    if parts.username or parts.password:
        return "the URL must not carry credentials"
    if allow_private:
        return None
    host = parts.hostname
    try:
        addresses = [host] if _is_ip(host) else [
            info[4][0] for info in await asyncio.get_running_loop().getaddrinfo(
                host, parts.port or 443, type=socket.SOCK_STREAM)
        ]  # fmt: skip
    except (socket.gaierror, UnicodeError):
        return None
    if any(not _public(str(a).split("%")[0]) for a in addresses):
        return f"{host} is a loopback, link-local or private address: webhooks go to public hosts"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- Endpoints -----------------------------------------------------------------------------------


def _types(types: list[str]) -> list[str]:
    unknown = sorted(set(types) - set(EVENT_TYPES))
    if unknown:
        raise InvalidInput(f"unknown event type {unknown[0]!r}", field="body.event_types")
    return sorted(set(types))


async def create_endpoint(
    pool: asyncpg.Pool, settings: Settings, merchant: UUID, url: str, types: list[str],
    description: str,
) -> dict[str, Any]:  # fmt: skip
    why = await refusal(url, settings.webhook_allow_private)
    if why:
        raise InvalidInput(why, field="body.url")
    secret = new_secret()
    async with transaction(pool) as conn:
        row = await repo.insert_endpoint(conn, merchant, url, description, _types(types),
                                         settings.keyring.encrypt(secret.encode()))  # fmt: skip
    return {**row, "secret": secret}


async def _endpoint(db: asyncpg.Pool | asyncpg.Connection, merchant: UUID, endpoint: UUID,
                    lock: bool = False) -> dict[str, Any]:  # fmt: skip
    row = await repo.get_endpoint(db, merchant, endpoint, lock=lock)
    if row is None:
        raise NotFound("webhook endpoint not found", field="endpoint_id")
    return row


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.endswith("secret_enc")}


async def get_endpoint(pool: asyncpg.Pool, merchant: UUID, endpoint: UUID) -> dict[str, Any]:
    return _view(await _endpoint(pool, merchant, endpoint))


async def list_endpoints(pool: asyncpg.Pool, merchant: UUID) -> list[dict[str, Any]]:
    return await repo.list_endpoints(pool, merchant)


async def update_endpoint(
    pool: asyncpg.Pool, settings: Settings, merchant: UUID, endpoint: UUID, changes: dict[str, Any]
) -> dict[str, Any]:
    if "url" in changes:
        why = await refusal(changes["url"], settings.webhook_allow_private)
        if why:
            raise InvalidInput(why, field="body.url")
    if "event_types" in changes:
        changes["event_types"] = _types(changes["event_types"])
    if "enabled" in changes:
        # Enabled again by a person: the failure streak starts over.
        changes |= {"disabled_reason": None if changes["enabled"] else "disabled by the merchant",
                    "failing_since": None}  # fmt: skip
    async with transaction(pool) as conn:
        await _endpoint(conn, merchant, endpoint, lock=True)
        if changes:
            await repo.update_endpoint(conn, endpoint, **changes)
    return await get_endpoint(pool, merchant, endpoint)


async def delete_endpoint(pool: asyncpg.Pool, merchant: UUID, endpoint: UUID) -> None:
    async with transaction(pool) as conn:
        if not await repo.delete_endpoint(conn, merchant, endpoint):
            raise NotFound("webhook endpoint not found", field="endpoint_id")


async def rotate_secret(
    pool: asyncpg.Pool, keyring: Keyring, merchant: UUID, endpoint: UUID, overlap_seconds: int,
    now: datetime,
) -> dict[str, Any]:  # fmt: skip
    """A new secret; the old one keeps signing beside it (two signatures) for the overlap."""
    secret = new_secret()
    async with transaction(pool) as conn:
        row = await _endpoint(conn, merchant, endpoint, lock=True)
        await repo.update_endpoint(
            conn, endpoint, secret_enc=keyring.encrypt(secret.encode()),
            previous_secret_enc=row["secret_enc"] if overlap_seconds else None,
            previous_until=now + timedelta(seconds=overlap_seconds) if overlap_seconds else None,
        )  # fmt: skip
    return {**await get_endpoint(pool, merchant, endpoint), "secret": secret}


async def send_test(pool: asyncpg.Pool, merchant: UUID, endpoint: UUID, now: datetime) -> None:
    async with transaction(pool) as conn:
        row = await _endpoint(conn, merchant, endpoint)
        if not row["enabled"]:
            raise Conflict("the endpoint is disabled: enable it first", field="endpoint_id")
        await events_repo.announce_to(conn, merchant, endpoint, "webhook.test",
                                      {"endpoint_id": endpoint, "sent_at": now})  # fmt: skip


async def deliveries(pool: asyncpg.Pool, merchant: UUID, endpoint: UUID, limit: int,
                     before: int | None) -> list[dict[str, Any]]:  # fmt: skip
    await _endpoint(pool, merchant, endpoint)
    return await repo.attempts(pool, merchant, endpoint, limit, before)


async def redeliver(pool: asyncpg.Pool, merchant: UUID, delivery: UUID, now: datetime) -> None:
    async with transaction(pool) as conn:
        if not await repo.redeliver(conn, merchant, delivery, now):
            raise NotFound("delivery not found (or its endpoint is disabled)",
                           field="delivery_id")  # fmt: skip


async def feed(pool: asyncpg.Pool, merchant: UUID, after: int, types: list[str] | None,
               limit: int) -> dict[str, Any]:  # fmt: skip
    if types is not None:
        _types(types)
    rows = await events_repo.feed(pool, merchant, after, types, limit)
    events = [{"id": webhook_id(r["id"]), "cursor": r["seq"], "type": r["type"],
               "timestamp": r["created_at"], "data": r["data"]} for r in rows]  # fmt: skip
    return {"events": events, "next_cursor": rows[-1]["seq"] if rows else after}


# -- Delivery ------------------------------------------------------------------------------------


def retry_schedule(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s.strip()]


def next_attempt(attempts: int, schedule: list[float], now: datetime) -> datetime | None:
    """When to try again after `attempts` failures (None: give up), ±20 % jitter so that a
    recovered receiver is not hit by every retry at once."""
    if attempts > len(schedule):
        return None
    delay = schedule[attempts - 1]
    return now + timedelta(seconds=delay * random.uniform(0.8, 1.2))


def _signatures(keyring: Keyring, claim: dict[str, Any], msg_id: str, sent: datetime,
                body: str) -> str:  # fmt: skip
    secrets_ = [claim["secret_enc"]]
    if claim["previous_secret_enc"] and claim["previous_until"] and claim["previous_until"] > sent:
        secrets_.append(claim["previous_secret_enc"])
    return " ".join(Webhook(keyring.decrypt(s).decode()).sign(msg_id, sent, body)
                    for s in secrets_)  # fmt: skip


async def _send(client: httpx.AsyncClient, settings: Settings, claim: dict[str, Any],
                now: datetime) -> tuple[int | None, int, str | None, str | None]:  # fmt: skip
    """(status, latency ms, response excerpt, error) of one attempt."""
    msg_id = webhook_id(claim["event_id"])
    body = orjson.dumps({"type": claim["type"], "timestamp": claim["created_at"],
                         "data": repo.decode(claim["data"])}).decode()  # fmt: skip
    started = time.perf_counter()
    why = await refusal(claim["url"], settings.webhook_allow_private)
    if why:
        return None, 0, None, why
    headers = {
        "content-type": "application/json", "user-agent": USER_AGENT,
        "webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": _signatures(settings.keyring, claim, msg_id, now, body),
    }  # fmt: skip
    try:
        async with client.stream("POST", claim["url"], content=body, headers=headers) as answer:
            excerpt = b""
            async for chunk in answer.aiter_bytes():
                excerpt += chunk
                if len(excerpt) >= EXCERPT_BYTES:
                    break
            latency = int((time.perf_counter() - started) * 1000)
            return (answer.status_code, latency,
                    excerpt[:EXCERPT_BYTES].decode("utf-8", "replace"), None)  # fmt: skip
    except httpx.HTTPError as exc:
        latency = int((time.perf_counter() - started) * 1000)
        return None, latency, None, f"{type(exc).__name__}: {exc}"[:500]


async def deliver_due(pool: asyncpg.Pool, settings: Settings, client: httpx.AsyncClient,
                      limit: int = 100) -> int:  # fmt: skip
    """Claim and send what is due; returns how many attempts were made."""
    now = datetime.now(UTC)
    async with transaction(pool) as conn:
        claims = await repo.claim_due(conn, now, settings.webhook_lease_seconds, limit)
    if not claims:
        return 0
    results = await asyncio.gather(*(_send(client, settings, c, now) for c in claims))
    schedule = retry_schedule(settings.webhook_retry_seconds)
    for claim, (status, latency, excerpt, error) in zip(claims, results, strict=True):
        done = datetime.now(UTC)
        async with transaction(pool) as conn:
            await repo.record_attempt(conn, claim["id"], claim["endpoint_id"], status, latency,
                                      excerpt, error)  # fmt: skip
            if status is not None and 200 <= status < 300:
                await repo.mark_delivered(conn, claim["id"], claim["endpoint_id"], done)
                continue
            since = await repo.mark_failed_attempt(
                conn, claim["id"], claim["endpoint_id"],
                next_attempt(claim["attempts"], schedule, done), done,
            )  # fmt: skip
            limit_hours = settings.webhook_disable_after_hours
            if claim["enabled"] and done - since >= timedelta(hours=limit_hours):
                await _disable(conn, claim, since)
    return len(claims)


async def _disable(conn: asyncpg.Connection, claim: dict[str, Any], since: datetime) -> None:
    reason = f"failing since {since.isoformat()}"
    await repo.update_endpoint(conn, claim["endpoint_id"], enabled=False, disabled_reason=reason)
    await repo.park_deliveries(conn, claim["endpoint_id"])
    await events_repo.announce(conn, claim["merchant_id"], "endpoint.disabled",
                               {"endpoint_id": claim["endpoint_id"], "url": claim["url"],
                                "reason": reason})  # fmt: skip


async def expire_events(pool: asyncpg.Pool, now: datetime, days: int) -> int:
    async with transaction(pool) as conn:
        return await events_repo.expire(conn, now - timedelta(days=days))


def client(settings: Settings) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.webhook_timeout_seconds),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=settings.webhook_concurrency),
        trust_env=False,
    )
