"""Merchants (tenants) and their API keys."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from app.security import hash_api_key, new_api_key, new_webhook_secret


@dataclass(frozen=True, slots=True)
class Merchant:
    id: UUID
    name: str


@dataclass(frozen=True, slots=True)
class CreatedMerchant:
    id: UUID
    name: str
    api_key: str
    webhook_secret: str


async def create_merchant(pool: asyncpg.Pool, name: str) -> CreatedMerchant:
    key = new_api_key()
    secret = new_webhook_secret()
    async with pool.acquire() as conn, conn.transaction():
        merchant_id = await conn.fetchval(
            "INSERT INTO merchants (name, webhook_secret) VALUES ($1, $2) RETURNING id",
            name,
            secret,
        )
        await conn.execute(
            "INSERT INTO api_keys (merchant_id, key_hash, key_prefix, label)"
            " VALUES ($1, $2, $3, 'initial')",
            merchant_id,
            key.hash,
            key.prefix,
        )
    return CreatedMerchant(id=merchant_id, name=name, api_key=key.key, webhook_secret=secret)


async def add_api_key(pool: asyncpg.Pool, merchant_id: UUID, label: str) -> str:
    key = new_api_key()
    await pool.execute(
        "INSERT INTO api_keys (merchant_id, key_hash, key_prefix, label) VALUES ($1, $2, $3, $4)",
        merchant_id,
        key.hash,
        key.prefix,
        label,
    )
    return key.key


async def merchant_for_api_key(pool: asyncpg.Pool, api_key: str) -> Merchant | None:
    row = await pool.fetchrow(
        "SELECT m.id, m.name FROM api_keys k JOIN merchants m ON m.id = k.merchant_id"
        " WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        hash_api_key(api_key),
    )
    return Merchant(id=row["id"], name=row["name"]) if row else None
