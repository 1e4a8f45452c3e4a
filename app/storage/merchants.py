"""Merchants (tenants) and their API keys, in SQL (created by app/services/merchants.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.security import NewApiKey, hash_api_key


@dataclass(frozen=True, slots=True)
class Merchant:
    id: UUID
    name: str
    key_id: UUID | None = None  # the API key that authenticated (who did it, for the record)
    scopes: tuple[str, ...] = ("admin",)  # what that key may do (app/scopes.py)


@dataclass(frozen=True, slots=True)
class CreatedMerchant:
    id: UUID
    name: str
    api_key: str
    webhook_secret: str


async def insert_merchant(
    conn: asyncpg.Connection, name: str, webhook_secret_enc: str, email_key_enc: str,
    keys_version: int,
) -> UUID:  # fmt: skip
    merchant_id: UUID = await conn.fetchval(
        "INSERT INTO merchants (name, webhook_secret_enc, email_key_enc, keys_version)"
        " VALUES ($1, $2, $3, $4) RETURNING id",
        name, webhook_secret_enc, email_key_enc, keys_version,
    )  # fmt: skip
    return merchant_id


async def sealed_keys(
    db: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID, *, lock: bool = False
) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT webhook_secret, webhook_secret_enc, email_key_enc, keys_version FROM merchants"
        " WHERE id = $1" + (" FOR UPDATE" if lock else ""),
        merchant_id,
    )
    return dict(row) if row else None


async def seal_keys(conn: asyncpg.Connection, merchant_id: UUID, sealed: Any, version: int) -> None:
    await conn.execute(
        "UPDATE merchants SET webhook_secret = NULL, webhook_secret_enc = $2, email_key_enc = $3,"
        " keys_version = $4 WHERE id = $1",
        merchant_id, sealed.webhook_secret_enc, sealed.email_key_enc, version,
    )  # fmt: skip


async def merchants_at_keys_version(db: asyncpg.Pool, version: int) -> list[UUID]:
    rows = await db.fetch("SELECT id FROM merchants WHERE keys_version = $1 ORDER BY id", version)
    return [r["id"] for r in rows]


# Where email hashes are stored: (table, hash column, canonical column, near column).
EMAIL_HASH_TABLES = {
    "advocates": ("email_hash", "email_canonical", "email_near"),
    "conversions": ("customer_email_hash", "customer_email_canonical", "customer_email_near"),
}


async def email_hashes(conn: asyncpg.Connection, table: str, merchant_id: UUID) -> list[Any]:
    hashed, canonical, near = EMAIL_HASH_TABLES[table]
    return await conn.fetch(
        f"SELECT id, {hashed} AS email_hash, {canonical} AS canonical, {near} AS near FROM {table}"
        f" WHERE merchant_id = $1 AND ({hashed} IS NOT NULL OR {canonical} IS NOT NULL)",
        merchant_id,
    )


async def rewrite_email_hashes(
    conn: asyncpg.Connection, table: str, rows: list[tuple[UUID, bytes | None, bytes | None,
                                                           list[bytes]]],
) -> None:  # fmt: skip
    hashed, canonical, near = EMAIL_HASH_TABLES[table]
    await conn.executemany(
        f"UPDATE {table} SET {hashed} = $2, {canonical} = $3, {near} = $4 WHERE id = $1", rows
    )


_KEY_COLUMNS = (
    "id, key_prefix, label, scopes, created_at, last_used_at, expires_at, revoked_at, rotated_to"
)


async def insert_api_key(
    conn: asyncpg.Connection | asyncpg.Pool, merchant_id: UUID, key: NewApiKey, label: str,
    scopes: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    row = await conn.fetchrow(
        "INSERT INTO api_keys (merchant_id, key_hash, key_prefix, label, scopes)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_KEY_COLUMNS}",
        merchant_id, key.hash, key.prefix, label, scopes or ["admin"],
    )  # fmt: skip
    assert row is not None
    return dict(row)


async def list_api_keys(
    db: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID
) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE merchant_id = $1 ORDER BY created_at, id",
        merchant_id,
    )
    return [dict(r) for r in rows]


async def lock_api_key(
    conn: asyncpg.Connection, merchant_id: UUID, key_id: UUID
) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE merchant_id = $1 AND id = $2 FOR UPDATE",
        merchant_id,
        key_id,
    )
    return dict(row) if row else None


async def end_api_key(
    conn: asyncpg.Connection, key_id: UUID, *, revoked: bool, expires: datetime | None = None,
    rotated_to: UUID | None = None,
) -> None:  # fmt: skip
    """Revoke at once, or let it expire at `expires` (a rotation's overlap)."""
    await conn.execute(
        "UPDATE api_keys SET revoked_at = CASE WHEN $2 THEN coalesce(revoked_at, now())"
        " ELSE revoked_at END, expires_at = coalesce($3, expires_at),"
        " rotated_to = coalesce($4, rotated_to) WHERE id = $1",
        key_id, revoked, expires, rotated_to,
    )  # fmt: skip


async def merchant_for_api_key(pool: asyncpg.Pool, api_key: str) -> Merchant | None:
    """The merchant of a live key (not revoked, not expired), with the key's scopes; records
    when the key was last used (at most once a minute, in the same round trip)."""
    row = await pool.fetchrow(
        "WITH k AS (SELECT id, merchant_id, scopes, last_used_at FROM api_keys"
        "  WHERE key_hash = $1 AND revoked_at IS NULL"
        "  AND (expires_at IS NULL OR expires_at > now())),"
        " touched AS (UPDATE api_keys SET last_used_at = now() WHERE id = (SELECT id FROM k)"
        "  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))"
        " SELECT m.id, m.name, k.id AS key_id, k.scopes FROM k"
        " JOIN merchants m ON m.id = k.merchant_id",
        hash_api_key(api_key),
    )
    if row is None:
        return None
    return Merchant(id=row["id"], name=row["name"], key_id=row["key_id"],
                    scopes=tuple(row["scopes"]))  # fmt: skip
