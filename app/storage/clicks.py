"""The click log in PostgreSQL, in SQL: the rows a batch becomes, the fast COPY and the safe
re-delivery path, the daily counts, and simple reads. The flusher's sink that drives them (and
opens their transactions) is app/services/clicks.py."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.attribution.bots import bot_reason
from app.attribution.fraud import ad_click_param
from app.pipeline.events import (
    CLICK_ID,
    IP_HASH,
    IP_PREFIX,
    LINK_ID,
    METHOD,
    PURPOSE,
    QUERY,
    REFERER,
    USER_AGENT,
    VISITOR_ID,
    click_time,
)
from app.storage.visitors import VisitorsByProgram

STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS click_staging (
    click_id uuid, clicked_at timestamptz, link_id uuid, visitor_id uuid, ip_hash bytea,
    ip_prefix text, user_agent text, referer text, method text, is_bot boolean, bot_reason text,
    ad_click_param text, merchant_id uuid, program_id uuid, advocate_id uuid
) ON COMMIT DELETE ROWS
"""
# The columns of one stored click, in the order of `click_record`'s tuple.
CLICK_COLUMNS = (
    "click_id", "clicked_at", "link_id", "visitor_id", "ip_hash", "ip_prefix", "user_agent",
    "referer", "method", "is_bot", "bot_reason", "ad_click_param", "merchant_id", "program_id",
    "advocate_id",
)  # fmt: skip

_RECORD = {name: i for i, name in enumerate(CLICK_COLUMNS)}
_CLICKED_AT, _VISITOR, _IS_BOT = _RECORD["clicked_at"], _RECORD["visitor_id"], _RECORD["is_bot"]
_MERCHANT, _PROGRAM = _RECORD["merchant_id"], _RECORD["program_id"]
_LINK = _RECORD["link_id"]

_ADD_COUNTS = """
ON CONFLICT (program_id, day) DO UPDATE
SET human = program_click_counts.human + excluded.human,
    bot = program_click_counts.bot + excluded.bot
"""
# A program's daily counts, and the same per channel of the clicked link, grow by the clicks of
# a batch, in the batch's transaction, in one round trip (a handful of rows each).
ADD_BATCH_COUNTS = f"""
WITH by_channel AS (
    INSERT INTO program_channel_counts (program_id, day, channel, merchant_id, human, bot)
    SELECT * FROM unnest($6::uuid[], $7::date[], $8::text[], $9::uuid[], $10::bigint[],
                         $11::bigint[])
    ON CONFLICT (program_id, day, channel) DO UPDATE
    SET human = program_channel_counts.human + excluded.human,
        bot = program_channel_counts.bot + excluded.bot
)
INSERT INTO program_click_counts (program_id, day, merchant_id, human, bot)
SELECT * FROM unnest($1::uuid[], $2::date[], $3::uuid[], $4::bigint[], $5::bigint[])
{_ADD_COUNTS}"""
# The slow, always-safe path: a click delivered twice hits the primary key and is skipped, and
# only the clicks stored now are counted. Returns how many were stored.
INSERT_FROM_STAGING = f"""
WITH stored AS (
    INSERT INTO clicks ({", ".join(CLICK_COLUMNS)})
    SELECT {", ".join(CLICK_COLUMNS)} FROM click_staging
    ON CONFLICT DO NOTHING
    RETURNING program_id, clicked_at, merchant_id, is_bot, link_id
), by_channel AS (
    INSERT INTO program_channel_counts (program_id, day, channel, merchant_id, human, bot)
    SELECT s.program_id, (s.clicked_at AT TIME ZONE 'UTC')::date, l.channel, s.merchant_id,
           count(*) FILTER (WHERE NOT s.is_bot), count(*) FILTER (WHERE s.is_bot)
    FROM stored s JOIN links l ON l.id = s.link_id GROUP BY 1, 2, 3, 4
    ON CONFLICT (program_id, day, channel) DO UPDATE
    SET human = program_channel_counts.human + excluded.human,
        bot = program_channel_counts.bot + excluded.bot
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
    """One encoded click (see app.pipeline.events) as the row to store (`CLICK_COLUMNS`).

    Bots are classified here, off the hot path, and a landing query's ad click id is named.
    `times` maps a click id's millisecond prefix to its datetime: clicks of the same millisecond
    share one (building datetimes was a fifth of the flusher's time).
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
    ad = ad_click_param(event[QUERY]) if len(event) > QUERY else None
    return (
        click_id, clicked_at, event[LINK_ID], event[VISITOR_ID],
        bytes.fromhex(ip_hash) if ip_hash else None, event[IP_PREFIX], user_agent,
        referer, method, reason is not None, reason, ad, *owner,
    )  # fmt: skip


Count = tuple[UUID, date, UUID, int, int]
ChannelCount = tuple[UUID, date, str, UUID, int, int]


def tally(
    records: list[tuple[Any, ...]], channels: dict[str, str]
) -> tuple[list[Count], list[ChannelCount], VisitorsByProgram]:
    """Per program, UTC day and channel of the clicked link (`channels`: link id → channel),
    (program, day, channel, merchant, human clicks, bot clicks); the same summed per program
    and day; and per program, the visitor ids of the human clicks. One dictionary update per
    click (this loop is a good part of the flusher's time); the sums are over a few rows."""
    by_channel: dict[tuple[UUID, date, str, UUID], list[int]] = {}
    visitors: VisitorsByProgram = {}
    for r in records:
        key = (r[_PROGRAM], r[_CLICKED_AT].date(), channels[r[_LINK]], r[_MERCHANT])
        tally = by_channel.get(key) or by_channel.setdefault(key, [0, 0])
        if r[_IS_BOT]:
            tally[1] += 1
            continue
        tally[0] += 1
        if r[_VISITOR]:
            visitors.setdefault(r[_PROGRAM], []).append(r[_VISITOR])
    counts: dict[tuple[UUID, date, UUID], list[int]] = {}
    for (program, day, _, merchant), (human, bot) in by_channel.items():
        total = counts.setdefault((program, day, merchant), [0, 0])
        total[0] += human
        total[1] += bot
    return ([(*key, human, bot) for key, (human, bot) in counts.items()],
            [(*key, human, bot) for key, (human, bot) in by_channel.items()], visitors)  # fmt: skip


async def count_link_clicks(pool: asyncpg.Pool, merchant_id: UUID, link_id: UUID) -> dict[str, int]:
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE NOT is_bot) AS human, count(*) FILTER (WHERE is_bot) AS bot"
        " FROM clicks WHERE merchant_id = $1 AND link_id = $2",
        merchant_id,
        link_id,
    )
    assert row is not None  # an aggregate always returns a row
    return {"human": row["human"], "bot": row["bot"]}


async def link_owners(
    conn: asyncpg.Connection, link_ids: set[str]
) -> tuple[dict[str, Owner | None], dict[str, str]]:
    """(merchant, program, advocate) of each link, None for a link that does not exist; and
    each existing link's channel."""
    rows = await conn.fetch(
        "SELECT id::text AS id, merchant_id, program_id, advocate_id, channel FROM links"
        " WHERE id = ANY($1::uuid[])",
        list(link_ids),
    )
    owners: dict[str, Owner | None] = dict.fromkeys(link_ids)
    channels: dict[str, str] = {}
    for r in rows:
        owners[r["id"]] = (r["merchant_id"], r["program_id"], r["advocate_id"])
        channels[r["id"]] = r["channel"]
    return owners, channels
