"""Payment-provider integrations: each merchant's encrypted signing secret per provider."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg


async def put(conn: asyncpg.Connection, merchant: UUID, provider: str, secret_enc: str) -> None:
    await conn.execute(
        "INSERT INTO integrations (merchant_id, provider, secret_enc) VALUES ($1, $2, $3)"
        " ON CONFLICT (merchant_id, provider) DO UPDATE SET secret_enc = EXCLUDED.secret_enc,"
        " updated_at = now()",
        merchant, provider, secret_enc,
    )  # fmt: skip


async def secret_of(db: asyncpg.Pool, merchant: UUID, provider: str) -> str | None:
    secret: str | None = await db.fetchval(
        "SELECT secret_enc FROM integrations WHERE merchant_id = $1 AND provider = $2",
        merchant,
        provider,
    )
    return secret


async def list_for(db: asyncpg.Pool, merchant: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT provider, created_at, updated_at FROM integrations WHERE merchant_id = $1"
        " ORDER BY provider",
        merchant,
    )
    return [dict(r) for r in rows]


async def delete(conn: asyncpg.Connection, merchant: UUID, provider: str) -> bool:
    found = await conn.fetchval(
        "DELETE FROM integrations WHERE merchant_id = $1 AND provider = $2 RETURNING provider",
        merchant,
        provider,
    )
    return found is not None
