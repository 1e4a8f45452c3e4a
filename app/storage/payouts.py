"""Payout batches, their lines, advocates' payout details and what advocates owe, in SQL. Which
balances a batch pays is app/attribution/payouts.py's; the transactions and ledger moves are
app/services/payouts.py's."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

Db = asyncpg.Connection | asyncpg.Pool

_BATCH = (
    "id, program_id AS only_program_id, idempotency_key, request_digest, status, skipped,"
    " created_at, sent_at,"
    " finished_at"
)
_LINE = (
    "l.id, l.advocate_id, a.external_id, l.currency, l.gross_minor, l.clawback_minor,"
    " l.amount_minor, l.reward_ids, l.status, l.failure, l.finished_at, a.payout_email,"
    " a.payout_name, a.payout_reference, a.name AS advocate_name"
)


async def lock_merchant(conn: asyncpg.Connection, merchant: UUID) -> None:
    """One batch is created at a time per merchant (the second sees what the first reserved)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"payouts:{merchant}")  # fmt: skip


async def batch_by_key(conn: Db, merchant: UUID, key: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_BATCH} FROM payout_batches WHERE merchant_id = $1 AND idempotency_key = $2",
        merchant,
        key,
    )
    return _batch(row) if row else None


def _batch(row: asyncpg.Record) -> dict[str, Any]:
    return {**dict(row), "skipped": orjson.loads(row["skipped"])}


async def approved_rewards(
    conn: asyncpg.Connection, merchant: UUID, program: UUID | None
) -> list[UUID]:
    """Lock (in id order) the advocates' rewards that hold an approved amount."""
    rows = await conn.fetch(
        "SELECT r.id FROM rewards r WHERE r.merchant_id = $1 AND r.beneficiary = 'advocate'"
        " AND ($2::uuid IS NULL OR r.program_id = $2) AND EXISTS (SELECT 1 FROM reward_balances b"
        " WHERE b.reward_id = r.id AND b.state = 'approved' AND b.amount_minor > 0)"
        " ORDER BY r.id FOR UPDATE OF r",
        merchant,
        program,
    )
    return [r["id"] for r in rows]


async def balances_of(conn: asyncpg.Connection, reward_ids: list[UUID]) -> list[dict[str, Any]]:
    """Per advocate and currency: the program, the approved total, the rewards holding it, and
    whether the advocate has payout details (read after the lock)."""
    rows = await conn.fetch(
        "SELECT r.advocate_id, r.program_id, r.currency, sum(b.amount_minor) AS approved,"
        " array_agg(r.id ORDER BY r.id) AS reward_ids,"
        " bool_or(a.payout_email IS NOT NULL OR a.payout_reference IS NOT NULL) AS has_details"
        " FROM rewards r JOIN reward_balances b ON b.reward_id = r.id AND b.state = 'approved'"
        " JOIN advocates a ON a.id = r.advocate_id"
        " WHERE r.id = ANY($1::uuid[]) AND b.amount_minor > 0"
        " GROUP BY r.advocate_id, r.program_id, r.currency ORDER BY r.advocate_id, r.currency",
        reward_ids,
    )
    return [{**dict(r), "currency": r["currency"].strip()} for r in rows]


async def owed(conn: Db, merchant: UUID) -> dict[tuple[UUID, str], int]:
    """What each advocate owes per currency and has not yet had netted in an open line."""
    rows = await conn.fetch(
        "SELECT advocate_id, currency, sum(amount) AS owed FROM ("
        "  SELECT advocate_id, currency, amount_minor AS amount FROM advocate_owed"
        "  WHERE merchant_id = $1"
        "  UNION ALL SELECT advocate_id, currency, -clawback_minor FROM payout_lines"
        "  WHERE merchant_id = $1 AND status IN ('created', 'sent')"
        ") AS o GROUP BY advocate_id, currency",
        merchant,
    )
    return {(r["advocate_id"], r["currency"].strip()): int(r["owed"]) for r in rows}


async def add_owed(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID, currency: str, amount: int,
    reason: str, *, reward: UUID | None = None, line: UUID | None = None,
) -> None:  # fmt: skip
    await conn.execute(
        "INSERT INTO advocate_owed (merchant_id, advocate_id, currency, amount_minor, reason,"
        " reward_id, line_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        merchant, advocate, currency, amount, reason, reward, line,
    )  # fmt: skip


async def insert_batch(
    conn: asyncpg.Connection, merchant: UUID, key: str, digest: str, program: UUID | None,
    skipped: list[dict[str, Any]],
) -> UUID:  # fmt: skip
    batch: UUID = await conn.fetchval(
        "INSERT INTO payout_batches (merchant_id, idempotency_key, request_digest, program_id,"
        " skipped) VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id",
        merchant, key, digest, program, orjson.dumps(skipped).decode(),
    )  # fmt: skip
    return batch


async def insert_line(
    conn: asyncpg.Connection, batch: UUID, merchant: UUID, advocate: UUID, currency: str,
    gross: int, clawback: int, reward_ids: list[UUID],
) -> UUID:  # fmt: skip
    line: UUID = await conn.fetchval(
        "INSERT INTO payout_lines (batch_id, merchant_id, advocate_id, currency, gross_minor,"
        " clawback_minor, amount_minor, reward_ids) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " RETURNING id",
        batch, merchant, advocate, currency, gross, clawback, gross - clawback, reward_ids,
    )  # fmt: skip
    return line


async def get_batch(
    db: Db, merchant: UUID, batch: UUID, *, lock: bool = False
) -> dict[str, Any] | None:
    row = await db.fetchrow(
        f"SELECT {_BATCH} FROM payout_batches WHERE merchant_id = $1 AND id = $2"
        + (" FOR UPDATE" if lock else ""),
        merchant,
        batch,
    )
    return _batch(row) if row else None


async def lines(db: Db, batch: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {_LINE} FROM payout_lines l JOIN advocates a ON a.id = l.advocate_id"
        " WHERE l.batch_id = $1 ORDER BY l.currency, a.external_id, l.id",
        batch,
    )
    return [{**dict(r), "currency": r["currency"].strip()} for r in rows]


async def list_batches(db: Db, merchant: UUID, limit: int) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {_BATCH} FROM payout_batches WHERE merchant_id = $1"
        " ORDER BY created_at DESC, id LIMIT $2",
        merchant,
        limit,
    )
    return [_batch(r) for r in rows]


async def set_batch_status(
    conn: asyncpg.Connection, batch: UUID, status: str, now: datetime
) -> None:
    column = "sent_at" if status == "sent" else "finished_at"
    await conn.execute(
        f"UPDATE payout_batches SET status = $2, {column} = $3 WHERE id = $1", batch, status, now
    )


async def set_line_status(
    conn: asyncpg.Connection, line: UUID, status: str, now: datetime | None,
    failure: str | None = None,
) -> None:  # fmt: skip
    await conn.execute(
        "UPDATE payout_lines SET status = $2, finished_at = $3, failure = $4 WHERE id = $1",
        line, status, now, failure,
    )  # fmt: skip


async def set_payout_details(
    conn: Db, merchant: UUID, advocate: UUID, email: str | None, name: str | None,
    reference: str | None,
) -> bool:  # fmt: skip
    status: str = await conn.execute(
        "UPDATE advocates SET payout_email = $3, payout_name = $4, payout_reference = $5"
        " WHERE merchant_id = $1 AND id = $2",
        merchant, advocate, email, name, reference,
    )  # fmt: skip
    return status.endswith(" 1")
