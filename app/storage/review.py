"""The review queue in SQL: items opened for held conversions, read with filters and a cursor,
and decided once. What a decision does to the ledger is app/services/review.py's."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

Db = asyncpg.Connection | asyncpg.Pool

_COLUMNS = (
    "r.id, r.program_id, r.advocate_id, r.conversion_id, r.rules, r.opened_at, r.status,"
    " r.decided_at, r.decided_by, r.note"
)


async def open_item(
    conn: asyncpg.Connection, merchant: UUID, program: UUID, advocate: UUID, conversion: UUID,
    rules: list[str],
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO review_items (merchant_id, program_id, advocate_id, conversion_id, rules)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (conversion_id) DO NOTHING",
        merchant, program, advocate, conversion, rules,
    )  # fmt: skip


async def list_items(
    db: Db, merchant: UUID, *, status: str, program: UUID | None, advocate: UUID | None,
    rule: str | None, after: tuple[datetime, UUID] | None, limit: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Oldest first, after the cursor (opened_at, id)."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM review_items r WHERE r.merchant_id = $1 AND r.status = $2"
        " AND ($3::uuid IS NULL OR r.program_id = $3)"
        " AND ($4::uuid IS NULL OR r.advocate_id = $4)"
        " AND ($5::text IS NULL OR $5 = ANY(r.rules))"
        " AND ($6::timestamptz IS NULL OR (r.opened_at, r.id) > ($6, $7::uuid))"
        " ORDER BY r.opened_at, r.id LIMIT $8",
        merchant, status, program, advocate, rule, after[0] if after else None,
        after[1] if after else None, limit,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def position(db: Db, merchant: UUID, item: UUID) -> tuple[datetime, UUID] | None:
    """Where an item sits in the queue's order (a page cursor)."""
    row = await db.fetchrow(
        "SELECT opened_at, id FROM review_items WHERE merchant_id = $1 AND id = $2",
        merchant,
        item,
    )
    return (row["opened_at"], row["id"]) if row else None


async def get_item(
    db: Db, merchant: UUID, item: UUID, *, lock: bool = False
) -> dict[str, Any] | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM review_items r WHERE r.merchant_id = $1 AND r.id = $2"
        + (" FOR UPDATE" if lock else ""),
        merchant,
        item,
    )
    return dict(row) if row else None


async def resolve(
    conn: asyncpg.Connection, items: list[UUID], status: str, key: UUID | None, note: str,
    now: datetime,
) -> None:  # fmt: skip
    await conn.execute(
        "UPDATE review_items SET status = $2, decided_by = $3, note = $4, decided_at = $5"
        " WHERE id = ANY($1::uuid[]) AND status = 'open'",
        items, status, key, note, now,
    )  # fmt: skip


async def open_items_of_advocate(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID
) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT id FROM review_items WHERE merchant_id = $1 AND advocate_id = $2"
        " AND status = 'open' ORDER BY id FOR UPDATE",
        merchant,
        advocate,
    )
    return [r["id"] for r in rows]


async def ban_advocate(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID, reason: str, now: datetime
) -> list[str]:
    """Mark the advocate banned (once: the first ban's time and reason stay); returns the codes
    of their links, whose redirect records change."""
    await conn.execute(
        "UPDATE advocates SET banned_at = coalesce(banned_at, $3),"
        " ban_reason = coalesce(ban_reason, $4) WHERE merchant_id = $1 AND id = $2",
        merchant, advocate, now, reason,
    )  # fmt: skip
    rows = await conn.fetch(
        "SELECT code FROM links WHERE merchant_id = $1 AND advocate_id = $2", merchant, advocate
    )
    return [r["code"] for r in rows]


async def lock_rewards_of_advocate(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID
) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT id FROM rewards WHERE merchant_id = $1 AND advocate_id = $2 ORDER BY id FOR UPDATE",
        merchant,
        advocate,
    )
    return [r["id"] for r in rows]
