"""Advocate page tokens: stored as hashes, with their expiry and revocation (app/security.py
makes and checks the tokens themselves)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

_COLUMNS = "id, created_at, expires_at, revoked_at"


async def insert_token(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID, token_hash: bytes,
    expires: datetime,
) -> dict[str, Any]:  # fmt: skip
    row = await conn.fetchrow(
        "INSERT INTO advocate_tokens (merchant_id, advocate_id, token_hash, expires_at)"
        f" VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}",
        merchant, advocate, token_hash, expires,
    )  # fmt: skip
    assert row is not None
    return dict(row)


async def list_tokens(db: asyncpg.Pool, merchant: UUID, advocate: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM advocate_tokens WHERE merchant_id = $1 AND advocate_id = $2"
        " ORDER BY created_at, id",
        merchant,
        advocate,
    )
    return [dict(r) for r in rows]


async def revoke_token(conn: asyncpg.Connection, merchant: UUID, advocate: UUID,
                       token: UUID) -> bool:  # fmt: skip
    found = await conn.fetchval(
        "UPDATE advocate_tokens SET revoked_at = coalesce(revoked_at, now())"
        " WHERE merchant_id = $1 AND advocate_id = $2 AND id = $3 RETURNING id",
        merchant, advocate, token,
    )  # fmt: skip
    return found is not None


async def revoke_all(conn: asyncpg.Connection, merchant: UUID, advocate: UUID) -> int:
    rows = await conn.fetch(
        "UPDATE advocate_tokens SET revoked_at = now() WHERE merchant_id = $1"
        " AND advocate_id = $2 AND revoked_at IS NULL RETURNING id",
        merchant,
        advocate,
    )
    return len(rows)


async def holder(db: asyncpg.Pool, token_hash: bytes, now: datetime) -> dict[str, Any] | None:
    """(merchant, advocate, whether the program shows amounts) of a live token, else None."""
    row = await db.fetchrow(
        "SELECT t.merchant_id, t.advocate_id, t.expires_at, p.advocate_sees_amounts,"
        " p.id AS program_id, p.name AS program_name, p.share_text, a.referral_code"
        " FROM advocate_tokens t"
        " JOIN advocates a ON a.merchant_id = t.merchant_id AND a.id = t.advocate_id"
        " JOIN programs p ON p.id = a.program_id"
        " WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2",
        token_hash,
        now,
    )
    return dict(row) if row else None
