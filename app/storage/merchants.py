"""Merchants (tenants) and their API keys, in SQL (created by app/services/merchants.py)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from app.security import NewApiKey, hash_api_key


@dataclass(frozen=True, slots=True)
class Merchant:
    id: UUID
    name: str
    key_id: UUID | None = None  # the API key that authenticated (who did it, for the record)


@dataclass(frozen=True, slots=True)
class CreatedMerchant:
    id: UUID
    name: str
    api_key: str
    webhook_secret: str


async def insert_merchant(conn: asyncpg.Connection, name: str, webhook_secret: str) -> UUID:
    merchant_id: UUID = await conn.fetchval(
        "INSERT INTO merchants (name, webhook_secret) VALUES ($1, $2) RETURNING id",
        name,
        webhook_secret,
    )
    return merchant_id


async def insert_api_key(
    conn: asyncpg.Connection | asyncpg.Pool, merchant_id: UUID, key: NewApiKey, label: str
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (merchant_id, key_hash, key_prefix, label) VALUES ($1, $2, $3, $4)",
        merchant_id,
        key.hash,
        key.prefix,
        label,
    )


async def merchant_for_api_key(pool: asyncpg.Pool, api_key: str) -> Merchant | None:
    row = await pool.fetchrow(
        "SELECT m.id, m.name, k.id AS key_id FROM api_keys k"
        " JOIN merchants m ON m.id = k.merchant_id"
        " WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        hash_api_key(api_key),
    )
    return Merchant(id=row["id"], name=row["name"], key_id=row["key_id"]) if row else None
