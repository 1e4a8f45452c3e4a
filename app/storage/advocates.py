"""Advocates: a merchant's customers who refer others."""

from __future__ import annotations

from typing import cast
from uuid import UUID

import asyncpg
import orjson

from app.codes import new_referral_code
from app.security import EmailPrints
from app.storage.rows import AdvocateRow

_COLUMNS = (
    "id, merchant_id, program_id, external_id, name, referral_code, created_at, banned_at,"
    " ban_reason"
)
# The advocate's variant in the program's running experiment (their offer), as JSON or NULL.
_OFFER = (
    "(SELECT jsonb_build_object('experiment_id', e.id, 'variant', x.variant,"
    " 'share_message', v.share_message) FROM experiment_assignments x"
    " JOIN experiments e ON e.id = x.experiment_id AND e.status = 'running'"
    " JOIN experiment_variants v ON v.experiment_id = e.id AND v.key = x.variant"
    " WHERE x.advocate_id = advocates.id) AS experiment"
)


def _row(row: asyncpg.Record) -> AdvocateRow:
    out = dict(row)
    out["experiment"] = orjson.loads(out["experiment"]) if out.get("experiment") else None
    return cast(AdvocateRow, out)


async def enroll_advocate(
    conn: asyncpg.Connection,
    merchant_id: UUID,
    program_id: UUID,
    *,
    external_id: str,
    name: str,
    email_hash: bytes | None,
    email_prints: EmailPrints | None,
) -> tuple[AdvocateRow, bool]:
    """Insert the advocate, or return the one already enrolled with this external id.

    Returns (advocate, created). Enrolling is idempotent so a merchant can call it on every login.
    """
    for _ in range(10):
        row = await conn.fetchrow(
            "INSERT INTO advocates (merchant_id, program_id, external_id, name, email_hash,"
            " referral_code, email_canonical, email_near) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " $8)"
            f" ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
            merchant_id,
            program_id,
            external_id,
            name,
            email_hash,
            new_referral_code(name),
            email_prints.canonical if email_prints else None,
            list(email_prints.near) if email_prints else [],
        )
        if row is not None:
            return cast(AdvocateRow, dict(row)), True
        existing = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM advocates WHERE program_id = $1 AND external_id = $2",
            program_id,
            external_id,
        )
        if existing is not None:
            return cast(AdvocateRow, dict(existing)), False
        # Otherwise the random referral code collided: draw another.
    raise RuntimeError("could not allocate a unique referral code")


async def get_advocate(
    pool: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID, advocate_id: UUID
) -> AdvocateRow | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS}, {_OFFER} FROM advocates WHERE merchant_id = $1 AND id = $2",
        merchant_id,
        advocate_id,
    )
    return _row(row) if row else None


async def active_links(db: asyncpg.Pool, merchant: UUID, advocate: UUID) -> list[str]:
    """The codes of the advocate's active links, the default channel first."""
    rows = await db.fetch(
        "SELECT code FROM links WHERE merchant_id = $1 AND advocate_id = $2 AND active"
        " ORDER BY channel <> 'default', created_at",
        merchant,
        advocate,
    )
    return [r["code"] for r in rows]
