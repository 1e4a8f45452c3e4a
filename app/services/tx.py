"""The one way a use case opens a transaction: `async with transaction(pool) as conn:`.

Services are the only room that opens transactions (repositories take the connection they are
given); side effects that must follow the commit (a Redis write-through, a publish) come after
the `async with` block. A management write's audit record is written in the first of its
transactions (app/audit.py), so it commits with the change.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import cast

import asyncpg

from app import audit
from app.storage import audit as audit_repo


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn, conn.transaction():
        # The pool hands out a proxy that behaves as the connection it wraps.
        yield cast(asyncpg.Connection, conn)
        # A management write records itself in the first transaction it commits (app/audit.py).
        context = audit.current.get()
        if context is not None and not context.recorded:
            await audit_repo.record(cast(asyncpg.Connection, conn), context)
            context.recorded = True
