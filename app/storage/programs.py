"""Referral programs."""

from __future__ import annotations

from typing import cast
from uuid import UUID

import asyncpg

from app.storage.rows import ProgramRow

_COLUMNS = (
    "id, merchant_id, name, destination_url, allowed_domains, attribution_window_days,"
    " active, advocate_sees_amounts, share_text, created_at"
)


async def create_program(
    pool: asyncpg.Pool | asyncpg.Connection,
    merchant_id: UUID,
    *,
    name: str,
    destination_url: str,
    allowed_domains: list[str],
    attribution_window_days: int,
    advocate_sees_amounts: bool = False,
    share_text: str,
) -> ProgramRow:
    row = await pool.fetchrow(
        "INSERT INTO programs (merchant_id, name, destination_url, allowed_domains,"
        " attribution_window_days, advocate_sees_amounts, share_text)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        f" RETURNING {_COLUMNS}",
        merchant_id,
        name,
        destination_url,
        allowed_domains,
        attribution_window_days,
        advocate_sees_amounts,
        share_text,
    )
    assert row is not None  # INSERT … RETURNING always returns the row
    return cast(ProgramRow, dict(row))


async def get_program(
    pool: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID, program_id: UUID
) -> ProgramRow | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM programs WHERE merchant_id = $1 AND id = $2",
        merchant_id,
        program_id,
    )
    return cast(ProgramRow, dict(row)) if row else None


async def list_programs(pool: asyncpg.Pool, merchant_id: UUID) -> list[ProgramRow]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM programs WHERE merchant_id = $1 ORDER BY created_at",
        merchant_id,
    )
    return [cast(ProgramRow, dict(r)) for r in rows]
