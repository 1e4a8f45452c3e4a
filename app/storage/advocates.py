"""Advocates: a merchant's customers who refer others."""

from __future__ import annotations

from typing import cast
from uuid import UUID

import asyncpg

from app.codes import new_referral_code
from app.security import EmailPrints
from app.storage.rows import AdvocateRow

_COLUMNS = (
    "id, merchant_id, program_id, external_id, name, referral_code, created_at, banned_at,"
    " ban_reason"
)


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
        f"SELECT {_COLUMNS} FROM advocates WHERE merchant_id = $1 AND id = $2",
        merchant_id,
        advocate_id,
    )
    return cast(AdvocateRow, dict(row)) if row else None
