"""Webhook endpoints, deliveries and attempts in SQL (app/services/webhooks.py is the logic)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

_ENDPOINT = (
    "id, url, description, event_types, enabled, disabled_reason, failing_since, created_at,"
    " previous_until"
)


async def insert_endpoint(
    conn: asyncpg.Connection, merchant: UUID, url: str, description: str, types: list[str],
    secret_enc: str,
) -> dict[str, Any]:  # fmt: skip
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (merchant_id, url, description, event_types, secret_enc)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_ENDPOINT}",
        merchant, url, description, types, secret_enc,
    )  # fmt: skip
    assert row is not None
    return dict(row)


async def get_endpoint(db: asyncpg.Pool | asyncpg.Connection, merchant: UUID, endpoint: UUID,
                       *, lock: bool = False) -> dict[str, Any] | None:  # fmt: skip
    row = await db.fetchrow(
        f"SELECT {_ENDPOINT}, secret_enc, previous_secret_enc FROM webhook_endpoints"
        " WHERE merchant_id = $1 AND id = $2" + (" FOR UPDATE" if lock else ""),
        merchant, endpoint,
    )  # fmt: skip
    return dict(row) if row else None


async def list_endpoints(db: asyncpg.Pool, merchant: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE merchant_id = $1 ORDER BY created_at, id",
        merchant,
    )
    return [dict(r) for r in rows]


async def update_endpoint(conn: asyncpg.Connection, endpoint: UUID, **fields: Any) -> None:
    allowed = {"url", "description", "event_types", "enabled", "disabled_reason",
               "failing_since", "secret_enc", "previous_secret_enc", "previous_until"}  # fmt: skip
    assert set(fields) <= allowed
    sets = ", ".join(f"{name} = ${n}" for n, name in enumerate(fields, 2))
    await conn.execute(f"UPDATE webhook_endpoints SET {sets} WHERE id = $1", endpoint,
                       *fields.values())  # fmt: skip


async def delete_endpoint(conn: asyncpg.Connection, merchant: UUID, endpoint: UUID) -> bool:
    found = await conn.fetchval(
        "DELETE FROM webhook_endpoints WHERE merchant_id = $1 AND id = $2 RETURNING id",
        merchant,
        endpoint,
    )
    return found is not None


async def claim_due(conn: asyncpg.Connection, now: datetime, lease_seconds: float,
                    limit: int) -> list[dict[str, Any]]:  # fmt: skip
    """Deliveries due, leased to the caller (SKIP LOCKED: several workers share the work), with
    what is needed to send them, in the order of their events (those due at the same time: a
    transaction's events are)."""
    rows = await conn.fetch(
        "WITH due AS (SELECT d.id FROM webhook_deliveries d WHERE d.status = 'pending'"
        "  AND d.next_attempt_at <= $1 ORDER BY d.next_attempt_at, d.event_seq LIMIT $3"
        "  FOR UPDATE SKIP LOCKED)"
        " UPDATE webhook_deliveries d SET attempts = d.attempts + 1,"
        "  next_attempt_at = $1 + make_interval(secs => $2)"
        " FROM due, events ev, webhook_endpoints ep"
        " WHERE d.id = due.id AND ev.seq = d.event_seq AND ep.id = d.endpoint_id"
        " RETURNING d.id, d.attempts, d.endpoint_id, d.merchant_id, d.event_seq, ev.id AS event_id,"
        "  ev.type, ev.data, ev.created_at, ep.url, ep.enabled, ep.secret_enc,"
        "  ep.previous_secret_enc, ep.previous_until",
        now, lease_seconds, limit,
    )  # fmt: skip
    # UPDATE … RETURNING comes in no particular order.
    return sorted((dict(r) for r in rows), key=lambda r: (r["event_seq"], str(r["endpoint_id"])))


async def record_attempt(
    conn: asyncpg.Connection, delivery: UUID, endpoint: UUID, status: int | None,
    latency_ms: int, excerpt: str | None, error: str | None,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, endpoint_id, status_code, latency_ms,"
        " response_excerpt, error) VALUES ($1, $2, $3, $4, $5, $6)",
        delivery, endpoint, status, latency_ms, excerpt, error,
    )  # fmt: skip


async def mark_delivered(conn: asyncpg.Connection, delivery: UUID, endpoint: UUID,
                         now: datetime) -> None:  # fmt: skip
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'delivered', delivered_at = $2 WHERE id = $1",
        delivery, now,
    )  # fmt: skip
    await conn.execute("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1", endpoint)


async def mark_failed_attempt(
    conn: asyncpg.Connection, delivery: UUID, endpoint: UUID, retry_at: datetime | None,
    now: datetime,
) -> datetime:  # fmt: skip
    """Schedule the retry (None: give up); returns since when the endpoint has been failing."""
    if retry_at is None:
        await conn.execute("UPDATE webhook_deliveries SET status = 'failed' WHERE id = $1",
                           delivery)  # fmt: skip
    else:
        await conn.execute("UPDATE webhook_deliveries SET next_attempt_at = $2 WHERE id = $1",
                           delivery, retry_at)  # fmt: skip
    since: datetime = await conn.fetchval(
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, $2) WHERE id = $1"
        " RETURNING failing_since",
        endpoint, now,
    )  # fmt: skip
    return since


async def park_deliveries(conn: asyncpg.Connection, endpoint: UUID) -> int:
    """A disabled endpoint's pending deliveries wait (failed, redeliverable) rather than retry."""
    status = await conn.execute(
        "UPDATE webhook_deliveries SET status = 'failed' WHERE endpoint_id = $1"
        " AND status = 'pending'",
        endpoint,
    )
    return int(status.split()[-1])


async def attempts(db: asyncpg.Pool, merchant: UUID, endpoint: UUID, limit: int,
                   before: int | None) -> list[dict[str, Any]]:  # fmt: skip
    rows = await db.fetch(
        "SELECT a.id, a.delivery_id, 'msg_' || replace(ev.id::text, '-', '') AS webhook_id,"
        " ev.type, a.attempted_at, a.status_code, a.latency_ms, a.response_excerpt, a.error,"
        " d.status AS delivery_status"
        " FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"
        " JOIN events ev ON ev.seq = d.event_seq"
        " WHERE d.merchant_id = $1 AND a.endpoint_id = $2 AND ($4::bigint IS NULL OR a.id < $4)"
        " ORDER BY a.id DESC LIMIT $3",
        merchant, endpoint, limit, before,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def redeliver(conn: asyncpg.Connection, merchant: UUID, delivery: UUID,
                    now: datetime) -> bool:  # fmt: skip
    found = await conn.fetchval(
        "UPDATE webhook_deliveries d SET status = 'pending', next_attempt_at = $3"
        " FROM webhook_endpoints e WHERE d.merchant_id = $1 AND d.id = $2"
        " AND e.id = d.endpoint_id AND e.enabled RETURNING d.id",
        merchant, delivery, now,
    )  # fmt: skip
    return found is not None


def decode(data: Any) -> Any:
    return orjson.loads(data) if isinstance(data, str | bytes) else data


async def backlog(db: asyncpg.Pool) -> dict[str, Any]:
    """Across merchants: deliveries waiting, the oldest waiting event's age, given up, disabled
    endpoints (for the ops gauges)."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS pending,"
        " (SELECT coalesce(extract(epoch FROM now() - min(e.created_at)), 0)"
        "  FROM webhook_deliveries d JOIN events e ON e.seq = d.event_seq"
        "  WHERE d.status = 'pending') AS oldest,"
        " (SELECT count(*) FROM webhook_deliveries WHERE status = 'failed') AS failed,"
        " (SELECT count(*) FROM webhook_endpoints WHERE NOT enabled) AS disabled"
    )
    assert row is not None
    return dict(row)
