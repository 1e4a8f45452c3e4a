"""The dashboard's own SQL: its sessions (stored as hashes, tied to the API key that signed in)
and the few lists its pages show that the API has no endpoint for."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg


async def insert_session(conn: asyncpg.Connection, token_hash: bytes, merchant: UUID,
                         key: UUID, expires: datetime) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO dashboard_sessions (token_hash, merchant_id, key_id, expires_at)"
        " VALUES ($1, $2, $3, $4)",
        token_hash, merchant, key, expires,
    )  # fmt: skip


async def session(db: asyncpg.Pool, token_hash: bytes, now: datetime) -> dict[str, Any] | None:
    """A live session whose API key is still live (revoking the key ends its sessions)."""
    row = await db.fetchrow(
        "SELECT s.merchant_id, s.key_id, k.scopes, m.name FROM dashboard_sessions s"
        " JOIN api_keys k ON k.id = s.key_id JOIN merchants m ON m.id = s.merchant_id"
        " WHERE s.token_hash = $1 AND s.ended_at IS NULL AND s.expires_at > $2"
        " AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
        token_hash,
        now,
    )
    return dict(row) if row else None


async def end_session(conn: asyncpg.Connection, token_hash: bytes) -> None:
    await conn.execute(
        "UPDATE dashboard_sessions SET ended_at = now() WHERE token_hash = $1 AND ended_at IS NULL",
        token_hash,
    )


async def top_advocates(db: asyncpg.Pool, merchant: UUID, program: UUID,
                        limit: int = 10) -> list[dict[str, Any]]:  # fmt: skip
    rows = await db.fetch(
        "SELECT a.id, a.name, a.external_id, a.referral_code,"
        " count(*) FILTER (WHERE c.type = 'purchase') AS purchases,"
        " count(*) FILTER (WHERE c.type = 'signup') AS signups"
        " FROM conversions c JOIN advocates a ON a.id = c.advocate_id"
        " WHERE c.merchant_id = $1 AND c.program_id = $2 AND c.verified"
        " AND c.state IN ('attributed', 'refunded') AND c.fraud_action <> 'reject'"
        " GROUP BY a.id ORDER BY purchases DESC, signups DESC, a.id LIMIT $3",
        merchant, program, limit,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def advocate_conversions(db: asyncpg.Pool, merchant: UUID, advocate: UUID,
                               limit: int = 50) -> list[dict[str, Any]]:  # fmt: skip
    rows = await db.fetch(
        "SELECT id, type, state, order_id, amount_minor, currency, attribution_method,"
        " fraud_action, occurred_at FROM conversions WHERE merchant_id = $1 AND advocate_id = $2"
        " ORDER BY occurred_at DESC LIMIT $3",
        merchant, advocate, limit,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def advocates_of(db: asyncpg.Pool, merchant: UUID, program: UUID,
                       limit: int = 200) -> list[dict[str, Any]]:  # fmt: skip
    rows = await db.fetch(
        "SELECT id, name, external_id, referral_code, created_at FROM advocates"
        " WHERE merchant_id = $1 AND program_id = $2 ORDER BY created_at DESC LIMIT $3",
        merchant, program, limit,
    )  # fmt: skip
    return [dict(r) for r in rows]
