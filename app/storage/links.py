"""Tracked links: short codes that redirect to a destination for one advocate and channel."""

from __future__ import annotations

from typing import cast
from uuid import UUID

import asyncpg

from app.codes import new_link_code
from app.storage.rows import LinkRow, RedirectRecord

_COLUMNS = (
    "l.id, l.code, l.merchant_id, l.program_id, l.advocate_id, l.destination, l.channel,"
    " l.active, l.created_at"
)


async def create_link(
    conn: asyncpg.Connection | asyncpg.Pool,
    merchant_id: UUID,
    *,
    program_id: UUID,
    advocate_id: UUID,
    destination: str,
    channel: str,
) -> LinkRow:
    for _ in range(10):  # a random code may collide: draw another
        row = await conn.fetchrow(
            "INSERT INTO links AS l (code, merchant_id, program_id, advocate_id, destination,"
            " channel) VALUES ($1, $2, $3, $4, $5, $6)"
            f" ON CONFLICT (code) DO NOTHING RETURNING {_COLUMNS}",
            new_link_code(),
            merchant_id,
            program_id,
            advocate_id,
            destination,
            channel,
        )
        if row is not None:
            return cast(LinkRow, dict(row))
    raise RuntimeError("could not allocate a unique link code")


async def get_link(
    pool: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID, link_id: UUID
) -> LinkRow | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM links l WHERE l.merchant_id = $1 AND l.id = $2",
        merchant_id,
        link_id,
    )
    return cast(LinkRow, dict(row)) if row else None


async def list_advocate_links(
    pool: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID, advocate_id: UUID
) -> list[LinkRow]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM links l WHERE l.merchant_id = $1 AND l.advocate_id = $2"
        " ORDER BY l.created_at",
        merchant_id,
        advocate_id,
    )
    return [cast(LinkRow, dict(r)) for r in rows]


async def set_link_active(
    pool: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID, link_id: UUID, active: bool
) -> LinkRow | None:
    row = await pool.fetchrow(
        "UPDATE links l SET active = $3 WHERE l.merchant_id = $1 AND l.id = $2"
        f" RETURNING {_COLUMNS}",
        merchant_id,
        link_id,
        active,
    )
    return cast(LinkRow, dict(row)) if row else None


async def redirect_record(
    pool: asyncpg.Pool | asyncpg.Connection, code: str
) -> RedirectRecord | None:
    """What the redirect needs to know about a code (also the shape cached in Redis)."""
    row = await pool.fetchrow(
        "SELECT l.id::text AS id, l.destination,"
        " l.active AND p.active AND a.banned_at IS NULL AS active,"
        " p.attribution_window_days AS window_days"
        " FROM links l JOIN programs p ON p.id = l.program_id"
        " JOIN advocates a ON a.id = l.advocate_id WHERE l.code = $1",
        code,
    )
    return cast(RedirectRecord, dict(row)) if row else None
