"""The click log in PostgreSQL: batched, idempotent writes and simple reads."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from app.attribution.bots import bot_reason
from app.events import (
    CLICK_ID,
    IP_HASH,
    IP_PREFIX,
    LINK_ID,
    METHOD,
    PURPOSE,
    REFERER,
    USER_AGENT,
    VISITOR_ID,
    click_time,
)
from app.storage.visitors import VisitorsByProgram, add_visitors

if TYPE_CHECKING:
    from app.storage.flusher import Batch

_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS click_staging (
    click_id uuid, clicked_at timestamptz, link_id uuid, visitor_id uuid, ip_hash bytea,
    ip_prefix text, user_agent text, referer text, method text, is_bot boolean, bot_reason text,
    merchant_id uuid, program_id uuid, advocate_id uuid
) ON COMMIT DELETE ROWS
"""
# The columns of one stored click, in the order of `click_record`'s tuple.
CLICK_COLUMNS = (
    "click_id", "clicked_at", "link_id", "visitor_id", "ip_hash", "ip_prefix", "user_agent",
    "referer", "method", "is_bot", "bot_reason", "merchant_id", "program_id", "advocate_id",
)  # fmt: skip

_RECORD = {name: i for i, name in enumerate(CLICK_COLUMNS)}
_CLICKED_AT, _VISITOR, _IS_BOT = _RECORD["clicked_at"], _RECORD["visitor_id"], _RECORD["is_bot"]
_MERCHANT, _PROGRAM = _RECORD["merchant_id"], _RECORD["program_id"]

_ADD_COUNTS = """
ON CONFLICT (program_id, day) DO UPDATE
SET human = program_click_counts.human + excluded.human,
    bot = program_click_counts.bot + excluded.bot
"""
# A program's daily counts grow by the clicks of a batch, in the batch's transaction.
_ADD_BATCH_COUNTS = f"""
INSERT INTO program_click_counts (program_id, day, merchant_id, human, bot)
SELECT * FROM unnest($1::uuid[], $2::date[], $3::uuid[], $4::bigint[], $5::bigint[])
{_ADD_COUNTS}"""
# The slow, always-safe path: a click delivered twice hits the primary key and is skipped, and
# only the clicks stored now are counted. Returns how many were stored.
_INSERT_FROM_STAGING = f"""
WITH stored AS (
    INSERT INTO clicks ({", ".join(CLICK_COLUMNS)})
    SELECT {", ".join(CLICK_COLUMNS)} FROM click_staging
    ON CONFLICT DO NOTHING
    RETURNING program_id, clicked_at, merchant_id, is_bot
), counted AS (
    INSERT INTO program_click_counts (program_id, day, merchant_id, human, bot)
    SELECT program_id, (clicked_at AT TIME ZONE 'UTC')::date, merchant_id,
           count(*) FILTER (WHERE NOT is_bot), count(*) FILTER (WHERE is_bot)
    FROM stored GROUP BY 1, 2, 3
    {_ADD_COUNTS}
)
SELECT count(*) FROM stored
"""

Owner = tuple[UUID, UUID, UUID]  # merchant, program, advocate of a link


def click_record(event: list[Any], owner: Owner, times: dict[str, datetime]) -> tuple[Any, ...]:
    """One encoded click (see app.events) as the row to store (`CLICK_COLUMNS`).

    Bots are classified here, off the hot path. `times` maps a click id's millisecond prefix to
    its datetime: clicks of the same millisecond share one (building datetimes was a fifth of
    the flusher's time).
    """
    click_id = event[CLICK_ID]
    millis = click_id[:12]
    clicked_at = times.get(millis)
    if clicked_at is None:
        clicked_at = times[millis] = click_time(click_id)
    method = "HEAD" if event[METHOD] == "H" else "GET"
    user_agent, referer = event[USER_AGENT], event[REFERER]
    # Headers are taken as bytes; PostgreSQL's text cannot hold a NUL, and one such header
    # must not make the batch's COPY fail.
    if user_agent and "\x00" in user_agent:
        user_agent = user_agent.replace("\x00", "")
    if referer and "\x00" in referer:
        referer = referer.replace("\x00", "")
    reason = bot_reason(user_agent, event[PURPOSE], method)
    ip_hash = event[IP_HASH]
    return (
        click_id, clicked_at, event[LINK_ID], event[VISITOR_ID],
        bytes.fromhex(ip_hash) if ip_hash else None, event[IP_PREFIX], user_agent,
        referer, method, reason is not None, reason, *owner,
    )  # fmt: skip


class ClickStore:
    """Writes batches of clicks for one flusher connection.

    Fast path: one binary COPY straight into `clicks` — as fast as PostgreSQL takes rows. A batch
    holding a click that is already stored (re-delivered after a flusher died before its
    acknowledgement) makes the COPY fail on the primary key; then, and only then, the batch goes
    through a staging table and `INSERT … ON CONFLICT DO NOTHING`, which stores the rest once.
    The owners of each link (merchant, program, advocate) never change, so they are cached.
    """

    def __init__(self) -> None:
        self._owners: dict[str, Owner | None] = {}
        self._visitors: VisitorsByProgram = {}  # of the batch stored last, until acknowledged

    async def prepare(self, conn: asyncpg.Connection) -> None:
        await conn.execute(_STAGING_DDL)

    async def maintain(self, conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT ensure_click_partitions(now() - interval '1 month', 4)")

    async def _resolve(self, conn: asyncpg.Connection, link_ids: set[str]) -> None:
        rows = await conn.fetch(
            "SELECT id::text AS id, merchant_id, program_id, advocate_id FROM links"
            " WHERE id = ANY($1::uuid[])",
            list(link_ids),
        )
        for link_id in link_ids:
            self._owners[link_id] = None  # a link that does not exist: its clicks are dropped
        for r in rows:
            self._owners[r["id"]] = (r["merchant_id"], r["program_id"], r["advocate_id"])

    async def store(self, conn: asyncpg.Connection, batch: Batch) -> int:
        """Store a batch in one transaction. Returns how many clicks were new."""
        events: list[list[Any]] = batch.events
        owners = self._owners
        unknown = {e[LINK_ID] for e in events if e[LINK_ID] not in owners}
        if unknown:
            await self._resolve(conn, unknown)
        times: dict[str, datetime] = {}
        records = [
            click_record(e, owner, times)
            for e in events
            if (owner := owners[e[LINK_ID]]) is not None
        ]
        if not records:
            return 0
        counts, visitors = _tally(records)
        # A re-delivered click fails the fast path on the primary key; then the slow path below.
        # (The flusher counts what it skips in referral_events_duplicate_total.)
        try:
            async with conn.transaction():
                await conn.copy_records_to_table("clicks", records=records, columns=CLICK_COLUMNS)
                await conn.execute(_ADD_BATCH_COUNTS, *zip(*counts, strict=True))
            stored = len(records)
        except asyncpg.UniqueViolationError:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "click_staging", records=records, columns=CLICK_COLUMNS
                )
                stored = await conn.fetchval(_INSERT_FROM_STAGING)
        # All of the batch's visitors, new clicks or not: adding one twice changes nothing.
        self._visitors = visitors
        return stored

    def before_ack(self, pipe: Any) -> None:
        """Adds the stored batch's visitors to the programs' HyperLogLogs, in the pipeline that
        acknowledges the batch (after the commit)."""
        add_visitors(pipe, self._visitors)
        self._visitors = {}


def _tally(
    records: list[tuple[Any, ...]],
) -> tuple[list[tuple[UUID, date, UUID, int, int]], VisitorsByProgram]:
    """Per program and UTC day, (program, day, merchant, human clicks, bot clicks); and per
    program, the visitor ids of the human clicks."""
    counts: dict[tuple[UUID, date, UUID], list[int]] = {}
    visitors: VisitorsByProgram = {}
    for r in records:
        key = (r[_PROGRAM], r[_CLICKED_AT].date(), r[_MERCHANT])
        tally = counts.get(key) or counts.setdefault(key, [0, 0])
        if r[_IS_BOT]:
            tally[1] += 1
            continue
        tally[0] += 1
        if r[_VISITOR]:
            visitors.setdefault(r[_PROGRAM], []).append(r[_VISITOR])
    return [(*key, human, bot) for key, (human, bot) in counts.items()], visitors


async def count_link_clicks(pool: asyncpg.Pool, merchant_id: UUID, link_id: UUID) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE NOT is_bot) AS human, count(*) FILTER (WHERE is_bot) AS bot"
        " FROM clicks WHERE merchant_id = $1 AND link_id = $2",
        merchant_id,
        link_id,
    )
    return {"human": row["human"], "bot": row["bot"]}
