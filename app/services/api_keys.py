"""A merchant's API keys: issue one with scopes (the secret is shown once; only its hash is
kept), list them (never the secret), rotate (a new key with the same scopes; the old one stays
valid for the overlap asked, or stops at once), revoke. Every request looks its key up in
PostgreSQL (app/edge.py), so a revoked key stops working at once on every replica."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app.scopes import Scope
from app.security import new_api_key
from app.services.tenancy import found
from app.services.tx import transaction
from app.storage import audit as audit_repo
from app.storage import merchants as repo


async def issue(
    pool: asyncpg.Pool, merchant_id: UUID, label: str, scopes: list[Scope]
) -> dict[str, Any]:
    key = new_api_key()
    async with transaction(pool) as conn:
        row = await repo.insert_api_key(conn, merchant_id, key, label, sorted(set(scopes)))
    return {**row, "key": key.key}


async def list_keys(pool: asyncpg.Pool, merchant_id: UUID) -> list[dict[str, Any]]:
    return await repo.list_api_keys(pool, merchant_id)


async def rotate(
    pool: asyncpg.Pool, merchant_id: UUID, key_id: UUID, overlap_seconds: int, now: datetime
) -> dict[str, Any]:
    """A new key with the old one's label and scopes; the old one ends after the overlap."""
    async with transaction(pool) as conn:
        old = found(await repo.lock_api_key(conn, merchant_id, key_id), "API key", "key_id")
        key = new_api_key()
        new = await repo.insert_api_key(conn, merchant_id, key, old["label"], list(old["scopes"]))
        if overlap_seconds:
            await repo.end_api_key(conn, key_id, revoked=False, rotated_to=new["id"],
                                   expires=now + timedelta(seconds=overlap_seconds))  # fmt: skip
        else:
            await repo.end_api_key(conn, key_id, revoked=True, rotated_to=new["id"])
    return {**new, "key": key.key}


async def revoke(pool: asyncpg.Pool, merchant_id: UUID, key_id: UUID) -> None:
    """The key stops working at once (and is kept, revoked, for the record)."""
    async with transaction(pool) as conn:
        found(await repo.lock_api_key(conn, merchant_id, key_id), "API key", "key_id")
        await repo.end_api_key(conn, key_id, revoked=True)


async def audit_page(
    pool: asyncpg.Pool, merchant_id: UUID, *, before: int | None, key_id: UUID | None,
    object_id: str | None, operation: str | None, limit: int,
) -> dict[str, Any]:  # fmt: skip
    """The audit trail, newest first (who changed what, with which key)."""
    records = await audit_repo.list_records(
        pool, merchant_id, before=before, key_id=key_id, object_id=object_id,
        operation=operation, limit=limit + 1,
    )  # fmt: skip
    more = len(records) > limit
    records = records[:limit]
    return {"records": records, "next_cursor": records[-1]["id"] if more else None}
