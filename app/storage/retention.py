"""Retention in SQL: the click partitions old enough to lose their user agent, referer and IP
data, and the stripping itself — a whole monthly partition at a time, each once."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

_STRIP = "SET user_agent = NULL, referer = NULL, ip_hash = NULL, ip_prefix = NULL"
_HELD = "(user_agent IS NOT NULL OR referer IS NOT NULL OR ip_hash IS NOT NULL" \
        " OR ip_prefix IS NOT NULL)"  # fmt: skip


async def monthly_partitions(db: asyncpg.Pool | asyncpg.Connection) -> list[tuple[str, datetime]]:
    """(name, end of its month) of each monthly click partition not yet stripped."""
    rows = await db.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'clicks'::regclass AND c.relname ~ '^clicks_[0-9]{4}_[0-9]{2}$'"
        " AND NOT EXISTS (SELECT 1 FROM click_retention r WHERE r.partition_name = c.relname)"
        " ORDER BY c.relname"
    )
    found = []
    for row in rows:
        year, month = int(row["relname"][7:11]), int(row["relname"][12:14])
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        found.append((row["relname"], end))
    return found


async def strip_partition(conn: asyncpg.Connection, name: str) -> int:
    # The name comes from pg_class and matched the pattern above: quoted as an identifier anyway.
    status = await conn.execute(f'UPDATE "{name}" {_STRIP} WHERE {_HELD}')
    changed = int(status.split()[-1])
    await conn.execute(
        "INSERT INTO click_retention (partition_name, rows_changed) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING",
        name,
        changed,
    )
    return changed


async def strip_default(conn: asyncpg.Connection, before: datetime) -> int:
    """Clicks that landed in the default partition (a month without its own) are stripped by
    time instead."""
    status = await conn.execute(
        f"UPDATE clicks_default {_STRIP} WHERE clicked_at < $1 AND {_HELD}", before
    )
    return int(status.split()[-1])
