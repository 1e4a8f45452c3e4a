"""PostgreSQL connection pool and the migration runner."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from app.pipeline.redis_client import REDIS_UNAVAILABLE

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
# Any constant works; it only keeps two processes from migrating at the same time.
_MIGRATION_LOCK = 7_450_213


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)
    assert pool is not None
    return pool


def _migration_files(directory: Path) -> list[tuple[str, str]]:
    """(version, sql) of every migration file, in name order."""
    paths = sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [(path.stem, path.read_text()) for path in paths]


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration file not yet recorded, in name order, each in its own transaction."""
    files = _migration_files(directory)
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in files:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("migration applied", extra={"version": version})
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied_now


# SQLSTATE classes that say "try again" rather than "this value is wrong": connection exceptions,
# transaction rollbacks (serialization failure, deadlock), insufficient resources (disk full, too
# many connections), lock not available, operator intervention (shutdown, cannot connect now),
# system errors.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "55", "57", "58"})
_READ_ONLY_TRANSACTION = "25006"  # after a failover, until the new primary is found


def is_transient(exc: BaseException) -> bool:
    """An error that goes away by itself (outage, failover, deadlock, disk full — of PostgreSQL
    or of Redis, which a sink reads too): retry the batch. Anything else is about the event
    itself, and retrying would block the stream."""
    if isinstance(exc, REDIS_UNAVAILABLE):
        return True  # e.g. the conversion sink waiting on the click streams while Redis restarts
    if isinstance(
        exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
    ):
        return True  # InternalClientError: a connection left mid-operation by an outage
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state[:2] in _TRANSIENT_CLASSES or state == _READ_ONLY_TRANSACTION
    return False
