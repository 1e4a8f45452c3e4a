"""The facts the fraud rules read, counted in SQL, and each conversion's decision stored.

Which rule fires, and what it does, is decided in app/attribution/fraud.py; the thresholds come
in as arguments, so a count stops at what the threshold needs. Reads run in the caller's
transaction (app/services/processing.py holds the advocate's lock while it counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
import orjson

from app.attribution.fraud import AdvocateFacts, Decision
from app.pipeline.events import click_time

Db = asyncpg.Connection | asyncpg.Pool


async def advocate_facts(conn: Db, advocate_ids: list[UUID]) -> dict[UUID, AdvocateFacts]:
    """What the rules compare the customer with, of each advocate (those that exist)."""
    rows = await conn.fetch(
        "SELECT id, external_id, email_hash, email_canonical, email_near, banned_at"
        " FROM advocates WHERE id = ANY($1::uuid[])",
        advocate_ids,
    )
    return {r["id"]: _advocate_facts(r) for r in rows}


def _advocate_facts(r: asyncpg.Record) -> AdvocateFacts:
    return AdvocateFacts(
        r["external_id"], r["email_hash"], r["email_canonical"],
        frozenset(r["email_near"] or ()), r["banned_at"] is not None,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClickDetails:
    link_id: UUID
    clicked_at: datetime
    visitor_id: UUID | None
    ip_hash: bytes | None
    ip_prefix: str | None
    user_agent: str | None
    ad_click_param: str | None


async def click_details(conn: Db, click_id: UUID) -> ClickDetails | None:
    row = await conn.fetchrow(
        "SELECT link_id, clicked_at, visitor_id, ip_hash, ip_prefix, user_agent, ad_click_param"
        " FROM clicks WHERE click_id = $1 AND clicked_at = $2",
        click_id,
        click_time(click_id.hex),
    )
    return ClickDetails(**dict(row)) if row else None


class DeviceQuery(NamedTuple):
    """One conversion's browser, for `shared_devices`: whose own conversions to look in."""

    merchant: UUID
    advocate: AdvocateFacts
    conversion: UUID
    visitor: UUID | None
    ip_hash: bytes | None
    user_agent: str | None


async def shared_device(
    conn: Db, merchant: UUID, advocate: AdvocateFacts, conversion: UUID,
    visitor: UUID | None, ip_hash: bytes | None, user_agent: str | None,
) -> str | None:  # fmt: skip
    """What of this browser was seen on the advocate's own conversions (those where the customer
    is the advocate), in words; None when nothing was."""
    query = DeviceQuery(merchant, advocate, conversion, visitor, ip_hash, user_agent)
    [found] = await shared_devices(conn, [query])
    return found


async def shared_devices(conn: Db, queries: list[DeviceQuery]) -> list[str | None]:
    """`shared_device` of each, in order, in one query."""
    asked = [q for q in queries if _comparable(q)]
    rows = await conn.fetch(
        "SELECT s.browser, s.network"
        " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::bytea[], $6::uuid[],"
        "  $7::bytea[], $8::text[]) WITH ORDINALITY"
        "  AS t(m, conversion, customer, email_hash, canonical, visitor, ip_hash, user_agent, n)"
        # The browser's conversions first, a branch per way of knowing it, each on its index
        # (migration 0019); then those that are the advocate's own.
        " CROSS JOIN LATERAL (SELECT bool_or(c.visitor_id = t.visitor) AS browser,"
        "   bool_or(c.ip_hash = t.ip_hash AND c.user_agent = t.user_agent) AS network"
        "  FROM (SELECT * FROM conversions WHERE merchant_id = t.m AND visitor_id = t.visitor"
        "   UNION ALL SELECT * FROM conversions WHERE merchant_id = t.m"
        "   AND ip_hash = t.ip_hash AND user_agent = t.user_agent) AS c"
        "  WHERE c.id <> t.conversion AND c.type <> 'refund' AND (c.customer_id = t.customer"
        "   OR c.customer_email_hash = t.email_hash"
        "   OR c.customer_email_canonical = t.canonical)) AS s"
        " ORDER BY t.n",
        [q.merchant for q in asked], [q.conversion for q in asked],
        [q.advocate.external_id for q in asked], [q.advocate.email_hash for q in asked],
        [q.advocate.email_canonical for q in asked], [q.visitor for q in asked],
        [q.ip_hash for q in asked], [q.user_agent for q in asked],
    ) if asked else []  # fmt: skip
    words = iter([_seen_as(r["browser"], r["network"]) for r in rows])
    return [next(words) if _comparable(q) else None for q in queries]


def _comparable(q: DeviceQuery) -> bool:
    """Whether there is a browser to compare: our cookie, or an IP address with a user agent."""
    return q.visitor is not None or (q.ip_hash is not None and q.user_agent is not None)


SAME_BROWSER = "the same browser (our cookie)"
SAME_NETWORK = "the same IP address and user agent"


def _seen_as(browser: bool | None, network: bool | None) -> str | None:
    if browser:
        return SAME_BROWSER
    if network:
        return SAME_NETWORK
    return None


async def flood_clicks(
    conn: Db, link_id: UUID, ip_prefix: str, clicked_at: datetime, minutes: int
) -> int:
    """The most clicks on the link from the prefix in any `minutes`-long window that holds this
    click (windows that start at a click: the densest ones do)."""
    [most] = await floods(conn, [(link_id, ip_prefix, clicked_at, minutes)])
    return most


async def floods(conn: Db, clicks: list[tuple[UUID, str, datetime, int]]) -> list[int]:
    """`flood_clicks` of each (link, IP prefix, click time, minutes), in order, in one query."""
    if not clicks:
        return []
    rows = await conn.fetch(
        "SELECT (SELECT coalesce(max(n), 0) FROM ("
        "  SELECT c.clicked_at, count(*) OVER (ORDER BY c.clicked_at"
        "    RANGE BETWEEN CURRENT ROW AND t.span FOLLOWING) AS n"
        "  FROM clicks c WHERE c.link_id = t.link AND c.ip_prefix = t.prefix AND NOT c.is_bot"
        "  AND c.clicked_at BETWEEN t.at - t.span AND t.at + t.span"
        " ) AS w WHERE w.clicked_at <= t.at AND w.clicked_at >= t.at - t.span) AS most"
        " FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::interval[])"
        "  WITH ORDINALITY AS t(link, prefix, at, span, n)"
        " ORDER BY t.n",
        [c[0] for c in clicks], [c[1] for c in clicks], [c[2] for c in clicks],
        [timedelta(minutes=c[3]) for c in clicks],
    )  # fmt: skip
    return [int(r["most"]) for r in rows]


class VelocityQuery(NamedTuple):
    merchant: UUID
    advocate: UUID
    conversion: UUID
    visitor: UUID | None
    ip_prefix: str | None
    occurred_at: datetime
    days: int


async def velocity(
    conn: Db, merchant: UUID, advocate: UUID, conversion: UUID, visitor: UUID | None,
    ip_prefix: str | None, occurred_at: datetime, days: int,
) -> int:  # fmt: skip
    """The advocate's conversions (signups and purchases) from this browser or IP prefix in
    the `days` before this one, this one included."""
    query = VelocityQuery(merchant, advocate, conversion, visitor, ip_prefix, occurred_at, days)
    [count] = await velocities(conn, [query])
    return count


async def velocities(conn: Db, queries: list[VelocityQuery]) -> list[int]:
    """`velocity` of each, in order, in one query."""
    if not queries:
        return []
    rows = await conn.fetch(
        "SELECT (SELECT count(*) FROM conversions c WHERE c.merchant_id = t.m"
        "  AND c.advocate_id = t.a AND c.id <> t.conversion AND c.type <> 'refund'"
        "  AND c.occurred_at > t.since AND c.occurred_at <= t.at"
        "  AND (c.visitor_id = t.visitor OR c.ip_prefix = t.prefix)) AS earlier"
        " FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],"
        "  $6::timestamptz[], $7::timestamptz[]) WITH ORDINALITY"
        "  AS t(m, a, conversion, visitor, prefix, since, at, n)"
        " ORDER BY t.n",
        [q.merchant for q in queries], [q.advocate for q in queries],
        [q.conversion for q in queries], [q.visitor for q in queries],
        [q.ip_prefix for q in queries],
        [q.occurred_at - timedelta(days=q.days) for q in queries],
        [q.occurred_at for q in queries],
    )  # fmt: skip
    return [int(r["earlier"]) + 1 for r in rows]


async def period_rewards(
    conn: Db, merchant: UUID, advocate: UUID, conversion: UUID, currency: str, start: datetime,
    end: datetime,
) -> int:  # fmt: skip
    """The advocate's own rewards for other conversions in [start, end), except what was
    rejected or reversed."""
    total = await conn.fetchval(
        "SELECT coalesce(sum(b.amount_minor), 0) FROM rewards r"
        " JOIN conversions c ON c.id = r.conversion_id"
        " JOIN reward_balances b ON b.reward_id = r.id"
        " WHERE r.merchant_id = $1 AND r.advocate_id = $2 AND r.beneficiary = 'advocate'"
        " AND r.currency = $3 AND c.occurred_at >= $4 AND c.occurred_at < $5 AND c.id <> $6"
        " AND b.state IN ('pending', 'held', 'approved', 'paid')",
        merchant, advocate, currency, start, end, conversion,
    )  # fmt: skip
    return int(total)


async def set_browser(conn: asyncpg.Connection, conversion: UUID, visitor: UUID) -> None:
    """The converting browser of an unattributed conversion (an advocate's own purchase is
    later compared with it)."""
    await conn.execute(
        "UPDATE conversions SET visitor_id = coalesce(visitor_id, $2) WHERE id = $1",
        conversion,
        visitor,
    )


def findings_json(decision: Decision) -> str:
    return orjson.dumps([f.as_json() for f in decision.findings]).decode()


async def fraud_of(conn: Db, conversion: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT c.fraud_action, c.fraud_findings, c.rules_version, r.id AS review_id,"
        " r.status AS review_status FROM conversions c"
        " LEFT JOIN review_items r ON r.conversion_id = c.id WHERE c.id = $1",
        conversion,
    )
    assert row is not None
    return {
        "action": row["fraud_action"], "findings": orjson.loads(row["fraud_findings"]),
        "rules_version": row["rules_version"], "review_id": row["review_id"],
        "review_status": row["review_status"],
    }  # fmt: skip


# -- The preview and the click-flood sweep ------------------------------------------------------


async def recent_conversions(
    conn: Db, merchant: UUID, program: UUID, since: datetime, limit: int
) -> list[dict[str, Any]]:
    """The program's attributed signups and purchases since `since`, oldest first, with what
    their advocate was awarded."""
    rows = await conn.fetch(
        "SELECT c.id, c.event_id, c.type, c.occurred_at, c.received_at, c.amount_minor,"
        " c.currency, c.customer_id, c.customer_email_hash, c.customer_email_canonical,"
        " c.customer_email_near, c.customer_email_disposable, c.advocate_id,"
        " c.attributed_click_id, c.visitor_id, c.ip_hash, c.ip_prefix, c.user_agent,"
        " c.fraud_action, coalesce((SELECT sum(r.amount_minor) FROM rewards r"
        "   WHERE r.conversion_id = c.id AND r.beneficiary = 'advocate'), 0) AS advocate_reward"
        " FROM conversions c WHERE c.merchant_id = $1 AND c.program_id = $2 AND c.verified"
        " AND c.type <> 'refund' AND c.advocate_id IS NOT NULL AND c.occurred_at >= $3"
        " ORDER BY c.occurred_at, c.id LIMIT $4",
        merchant, program, since, limit,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def active_programs(conn: Db) -> list[tuple[UUID, UUID]]:
    """(program, merchant) of every active program."""
    rows = await conn.fetch("SELECT id, merchant_id FROM programs WHERE active ORDER BY id")
    return [(r["id"], r["merchant_id"]) for r in rows]


async def swept_until(conn: Db, program: UUID) -> datetime | None:
    until: datetime | None = await conn.fetchval(
        "SELECT swept_until FROM click_flood_sweeps WHERE program_id = $1", program
    )
    return until


async def mark_floods(
    conn: asyncpg.Connection, merchant: UUID, program: UUID, start: datetime, end: datetime,
    minutes: int, most: int,
) -> int:  # fmt: skip
    """Flag the program's human clicks in [start, end) that lie in a `minutes`-long window
    holding more than `most` clicks from their IP prefix on their link (themselves included),
    move them from `human` to `flagged` in the daily counts, and record how far this looked.
    Returns how many were flagged now (each click once, whoever else sweeps)."""
    flagged: int = await conn.fetchval(
        """
        WITH counted_ahead AS (
            SELECT click_id, clicked_at, link_id, ip_prefix,
                   count(*) OVER (PARTITION BY link_id, ip_prefix ORDER BY clicked_at
                                  RANGE BETWEEN CURRENT ROW AND $6::interval FOLLOWING) AS ahead
            FROM clicks
            WHERE merchant_id = $1 AND program_id = $2 AND clicked_at >= $3 AND clicked_at < $4
              AND NOT is_bot AND ip_prefix IS NOT NULL
        ), recent AS (
            -- The densest window holding each click starts at a click at most `minutes` before.
            SELECT click_id, clicked_at,
                   max(ahead) OVER (PARTITION BY link_id, ip_prefix ORDER BY clicked_at
                                    RANGE BETWEEN $6::interval PRECEDING AND CURRENT ROW) AS densest
            FROM counted_ahead
        ), marked AS (
            UPDATE clicks c SET flood = true FROM recent r
            WHERE c.click_id = r.click_id AND c.clicked_at = r.clicked_at AND NOT c.flood
              AND r.densest > $5
            RETURNING c.clicked_at, c.link_id
        ), by_channel AS (
            INSERT INTO program_channel_counts AS p (program_id, day, channel, merchant_id, human,
                                                     bot, flagged)
            SELECT $2, (m.clicked_at AT TIME ZONE 'UTC')::date, l.channel, $1, -count(*), 0,
                   count(*)
            FROM marked m JOIN links l ON l.id = m.link_id GROUP BY 2, 3
            ON CONFLICT (program_id, day, channel) DO UPDATE
            SET human = p.human + excluded.human, flagged = p.flagged + excluded.flagged
        ), counted AS (
            INSERT INTO program_click_counts AS p (program_id, day, merchant_id, human, bot,
                                                   flagged)
            SELECT $2, (clicked_at AT TIME ZONE 'UTC')::date, $1, -count(*), 0, count(*)
            FROM marked GROUP BY 2
            ON CONFLICT (program_id, day) DO UPDATE
            SET human = p.human + excluded.human, flagged = p.flagged + excluded.flagged
        )
        SELECT count(*) FROM marked
        """,
        merchant, program, start, end, most, timedelta(minutes=minutes),
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO click_flood_sweeps (program_id, swept_until) VALUES ($1, $2)"
        " ON CONFLICT (program_id) DO UPDATE SET swept_until = greatest("
        " click_flood_sweeps.swept_until, excluded.swept_until)",
        program,
        end,
    )
    return int(flagged)
