"""Exchange rates the merchant posts (one unit of `base` in `quote`, per UTC day), in SQL."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

Db = asyncpg.Connection | asyncpg.Pool


async def rate(db: Db, merchant: UUID, base: str, quote: str, day: date) -> Decimal | None:
    found: Decimal | None = await db.fetchval(
        "SELECT rate FROM exchange_rates WHERE merchant_id = $1 AND base = $2 AND quote = $3"
        " AND day = $4",
        merchant, base, quote, day,
    )  # fmt: skip
    return found


async def upsert(db: Db, merchant: UUID, rates: list[tuple[str, str, date, Decimal]]) -> None:
    await db.executemany(
        "INSERT INTO exchange_rates (merchant_id, base, quote, day, rate)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (merchant_id, base, quote, day)"
        " DO UPDATE SET rate = excluded.rate",
        [(merchant, *r) for r in rates],
    )


async def list_rates(
    db: Db, merchant: UUID, base: str | None, quote: str | None, limit: int
) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT base, quote, day, rate FROM exchange_rates WHERE merchant_id = $1"
        " AND ($2::text IS NULL OR base = $2) AND ($3::text IS NULL OR quote = $3)"
        " ORDER BY day DESC, base, quote LIMIT $4",
        merchant, base, quote, limit,
    )  # fmt: skip
    return [{**dict(r), "base": r["base"].strip(), "quote": r["quote"].strip()} for r in rows]
