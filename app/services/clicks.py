"""Storing batches of clicks from the stream: the flusher's sink for the click streams.

Each batch is one transaction; the SQL is app/storage/clicks.py. Bots are classified there, off
the hot path. The batch's human visitors go to the programs' HyperLogLogs in the pipeline that
acknowledges it, after the commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from app.pipeline.events import LINK_ID
from app.pipeline.flusher import Batch
from app.storage import clicks as clicks_repo
from app.storage.visitors import VisitorsByProgram, add_visitors


class ClickSink:
    """Writes batches of clicks for one flusher connection.

    Fast path: one binary COPY straight into `clicks` — as fast as PostgreSQL takes rows. A batch
    holding a click that is already stored (re-delivered after a flusher died before its
    acknowledgement) makes the COPY fail on the primary key; then, and only then, the batch goes
    through a staging table and `INSERT … ON CONFLICT DO NOTHING`, which stores the rest once.
    The owners of each link (merchant, program, advocate) never change, so they are cached.
    """

    def __init__(self) -> None:
        self._owners: dict[str, clicks_repo.Owner | None] = {}
        self._channels: dict[str, str] = {}  # link id → channel (a link's channel never changes)
        self._visitors: VisitorsByProgram = {}  # of the batch stored last, until acknowledged

    async def prepare(self, conn: asyncpg.Connection) -> None:
        await conn.execute(clicks_repo.STAGING_DDL)

    async def maintain(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT ensure_click_partitions(now() - interval '1 month', 4)")

    async def _resolve(self, conn: asyncpg.Connection, link_ids: set[str]) -> None:
        # A link that does not exist (None): its clicks are dropped.
        owners, channels = await clicks_repo.link_owners(conn, link_ids)
        self._owners.update(owners)
        self._channels.update(channels)

    async def store(self, conn: asyncpg.Connection, batch: Batch) -> int:
        """Store a batch in one transaction. Returns how many clicks were new."""
        events: list[list[Any]] = batch.events
        owners = self._owners
        unknown = {e[LINK_ID] for e in events if e[LINK_ID] not in owners}
        if unknown:
            await self._resolve(conn, unknown)
        times: dict[str, datetime] = {}
        records = [
            clicks_repo.click_record(e, owner, times)
            for e in events
            if (owner := owners[e[LINK_ID]]) is not None
        ]
        if not records:
            return 0
        counts, by_channel, visitors = clicks_repo.tally(records, self._channels)
        # A re-delivered click fails the fast path on the primary key; then the slow path below.
        # (The flusher counts what it skips in referral_events_duplicate_total.)
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "clicks", records=records, columns=clicks_repo.CLICK_COLUMNS
                )
                await conn.execute(clicks_repo.ADD_BATCH_COUNTS, *zip(*counts, strict=True),
                                   *zip(*by_channel, strict=True))  # fmt: skip
            stored = len(records)
        except asyncpg.UniqueViolationError:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "click_staging", records=records, columns=clicks_repo.CLICK_COLUMNS
                )
                stored = await conn.fetchval(clicks_repo.INSERT_FROM_STAGING)
        # All of the batch's visitors, new clicks or not: adding one twice changes nothing.
        self._visitors = visitors
        return stored

    def before_ack(self, pipe: Any) -> None:
        """Adds the stored batch's visitors to the programs' HyperLogLogs, in the pipeline that
        acknowledges the batch (after the commit)."""
        add_visitors(pipe, self._visitors)
        self._visitors = {}
