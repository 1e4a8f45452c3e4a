"""Reconciliation reports in SQL: our signed purchases for a period (with the refunds applied and
whether their rewards still stand), the clicks a shop's click ids name, and the reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from app.attribution.reconciliation import OurOrder

Db = asyncpg.Connection | asyncpg.Pool


async def our_orders(
    db: Db, merchant: UUID, order_ids: list[str], start: datetime, end: datetime
) -> tuple[dict[str, OurOrder], set[str]]:
    """Our signed purchases named by the shop or made in [start, end), and which of them are
    in the period."""
    rows = await db.fetch(
        """
        SELECT c.id, c.order_id, c.amount_minor, c.currency, c.occurred_at,
               (SELECT coalesce(sum(f.amount_minor), 0) FROM conversions f
                WHERE f.merchant_id = c.merchant_id AND f.refund_of = c.order_id
                  AND f.type = 'refund' AND f.state = 'refunded') AS refunded,
               EXISTS (SELECT 1 FROM rewards r JOIN reward_balances b ON b.reward_id = r.id
                       WHERE r.conversion_id = c.id AND b.amount_minor > 0
                         AND b.state IN ('pending', 'held', 'approved', 'reserved', 'paid'))
                 AS rewarded
        FROM conversions c
        WHERE c.merchant_id = $1 AND c.type = 'purchase' AND c.verified
          AND (c.order_id = ANY($2::text[]) OR (c.occurred_at >= $3 AND c.occurred_at < $4))
        """,
        merchant, order_ids, start, end,
    )  # fmt: skip
    ours, in_period = {}, set()
    for r in rows:
        ours[r["order_id"]] = OurOrder(
            r["order_id"], r["id"], int(r["amount_minor"]), int(r["refunded"]),
            (r["currency"] or "").strip(), bool(r["rewarded"]),
        )  # fmt: skip
        if start <= r["occurred_at"] < end:
            in_period.add(r["order_id"])
    return ours, in_period


async def clicks_named(db: Db, merchant: UUID, click_ids: list[UUID]) -> dict[UUID, UUID]:
    """Of these click ids, the ones that are our clicks, with their advocate."""
    rows = await db.fetch(
        "SELECT click_id, advocate_id FROM clicks WHERE merchant_id = $1"
        " AND click_id = ANY($2::uuid[])",
        merchant,
        click_ids,
    )
    return {r["click_id"]: r["advocate_id"] for r in rows}


_COLUMNS = "id, period_start, period_end, orders, differences, created_at, applied_at, applied"


def _report(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["differences"] = orjson.loads(row["differences"])
    out["applied"] = orjson.loads(row["applied"]) if row["applied"] else None
    return out


async def insert(
    conn: Db, merchant: UUID, start: datetime, end: datetime, orders: int,
    differences: list[dict[str, object]],
) -> UUID:  # fmt: skip
    report: UUID = await conn.fetchval(
        "INSERT INTO reconciliation_reports (merchant_id, period_start, period_end, orders,"
        " differences) VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id",
        merchant, start, end, orders, orjson.dumps(differences).decode(),
    )  # fmt: skip
    return report


async def get(db: Db, merchant: UUID, report: UUID, *, lock: bool = False) -> dict[str, Any] | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM reconciliation_reports WHERE merchant_id = $1 AND id = $2"
        + (" FOR UPDATE" if lock else ""),
        merchant,
        report,
    )
    return _report(row) if row else None


async def list_reports(db: Db, merchant: UUID, limit: int) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM reconciliation_reports WHERE merchant_id = $1"
        " ORDER BY created_at DESC, id LIMIT $2",
        merchant,
        limit,
    )
    return [_report(r) for r in rows]


async def mark_applied(
    conn: asyncpg.Connection, report: UUID, applied: list[dict[str, object]], now: datetime
) -> None:
    await conn.execute(
        "UPDATE reconciliation_reports SET applied_at = $2, applied = $3::jsonb WHERE id = $1",
        report, now, orjson.dumps(applied).decode(),
    )  # fmt: skip
