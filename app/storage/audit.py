"""The audit trail in SQL: append a record, read a merchant's records newest first."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import orjson

from app.audit import AuditContext


async def record(conn: asyncpg.Connection, context: AuditContext) -> None:
    await conn.execute(
        "INSERT INTO audit_log (merchant_id, key_id, operation, object_ids, change)"
        " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)",
        context.merchant_id, context.key_id, context.operation,
        orjson.dumps(context.object_ids).decode(),
        None if context.change is None else orjson.dumps(context.change).decode(),
    )  # fmt: skip


async def list_records(
    db: asyncpg.Pool | asyncpg.Connection, merchant: UUID, *, before: int | None,
    key_id: UUID | None, object_id: str | None, operation: str | None, limit: int,
) -> list[dict[str, Any]]:  # fmt: skip
    rows = await db.fetch(
        "SELECT id, key_id, at, operation, object_ids, change FROM audit_log"
        " WHERE merchant_id = $1 AND ($2::bigint IS NULL OR id < $2)"
        " AND ($3::uuid IS NULL OR key_id = $3)"
        " AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM jsonb_each_text(object_ids) AS o"
        "   WHERE o.value = $4))"
        " AND ($5::text IS NULL OR operation = $5)"
        " ORDER BY id DESC LIMIT $6",
        merchant, before, key_id, object_id, operation, limit,
    )  # fmt: skip
    return [
        {**dict(r), "object_ids": orjson.loads(r["object_ids"]),
         "change": orjson.loads(r["change"]) if r["change"] else None}
        for r in rows
    ]  # fmt: skip
