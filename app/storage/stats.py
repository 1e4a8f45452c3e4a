"""Statistics: clicks → signups → purchases → revenue → rewards, per program or per advocate.

A program's clicks come from the daily counts the flusher keeps (`program_click_counts`) and its
unique visitors from a HyperLogLog (`app.storage.visitors`), so a program of millions of clicks
answers in milliseconds; an advocate's from their own clicks. Reward amounts come from the
ledger (reward_balances), so the statistics always equal it.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app.attribution.conversions import ConversionState
from app.attribution.ledger import STATES
from app.pipeline.redis_client import RedisClient
from app.storage.visitors import count_visitors


async def program_funnel(
    pool: asyncpg.Pool, redis: RedisClient, merchant_id: UUID, program_id: UUID
) -> dict[str, Any]:
    """A program's funnel without reading its clicks: the daily counts the flusher keeps, and
    its visitors' HyperLogLog (None while Redis is unreachable)."""
    clicks = await pool.fetchrow(
        "SELECT coalesce(sum(human), 0)::bigint AS human, coalesce(sum(bot), 0)::bigint AS bot,"
        " coalesce(sum(flagged), 0)::bigint AS flagged FROM program_click_counts"
        " WHERE merchant_id = $1 AND program_id = $2",
        merchant_id,
        program_id,
    )
    assert clicks is not None  # an aggregate always returns a row
    visitors = await count_visitors(redis, program_id)
    rest = await _conversions_and_rewards(pool, merchant_id, program_id, None)
    return {"clicks": clicks["human"], "bot_clicks": clicks["bot"],
            "flagged_clicks": clicks["flagged"], "unique_visitors": visitors, **rest}  # fmt: skip


async def advocate_funnel(
    pool: asyncpg.Pool, merchant_id: UUID, advocate_id: UUID
) -> dict[str, Any]:
    """An advocate's funnel, from their own clicks (an index range: milliseconds)."""
    clicks = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE NOT is_bot AND NOT flood) AS human,"
        " count(*) FILTER (WHERE is_bot) AS bot,"
        " count(*) FILTER (WHERE flood AND NOT is_bot) AS flagged,"
        " count(DISTINCT visitor_id) FILTER (WHERE NOT is_bot) AS visitors"
        " FROM clicks WHERE merchant_id = $1 AND advocate_id = $2",
        merchant_id,
        advocate_id,
    )
    assert clicks is not None
    rest = await _conversions_and_rewards(pool, merchant_id, None, advocate_id)
    return {"clicks": clicks["human"], "bot_clicks": clicks["bot"],
            "flagged_clicks": clicks["flagged"], "unique_visitors": clicks["visitors"],
            **rest}  # fmt: skip


async def advocate_page(pool: asyncpg.Pool, merchant_id: UUID, advocate_id: UUID) -> dict[str, Any]:
    """What the advocate's own page shows: their funnel, with rewards split into their own and
    their friends' (the service decides what of it the advocate may see)."""
    funnel = await advocate_funnel(pool, merchant_id, advocate_id)
    rows = await pool.fetch(
        "SELECT beneficiary, currency, state, sum(amount_minor) AS amount FROM reward_balances"
        " WHERE merchant_id = $1 AND advocate_id = $2 GROUP BY beneficiary, currency, state",
        merchant_id,
        advocate_id,
    )
    split: dict[str, dict[str, dict[str, int]]] = {"advocate": {}, "friend": {}}
    for row in rows:
        bucket = split[row["beneficiary"]].setdefault(
            row["currency"].strip(), {s.value: 0 for s in STATES}
        )
        bucket[row["state"]] += int(row["amount"])
    return {**funnel, "rewards_minor": split["advocate"], "friend_rewards_minor": split["friend"]}


async def _conversions_and_rewards(
    pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID | None, advocate_id: UUID | None
) -> dict[str, Any]:
    scope = "merchant_id = $1 AND ($2::uuid IS NULL OR program_id = $2)" \
            " AND ($3::uuid IS NULL OR advocate_id = $3)"  # fmt: skip
    args = (merchant_id, program_id, advocate_id)
    # Verified conversions only: an order known from the anonymous pixel alone is counted apart
    # (unverified_orders), never as a purchase or revenue.
    # Conversions the fraud rules rejected are counted apart too, never as purchases or revenue.
    conversions = await pool.fetch(
        "SELECT type, currency, verified, fraud_action, count(*) AS n,"
        " sum(amount_minor) AS amount"
        f" FROM conversions WHERE {scope} AND state = ANY($4::text[])"
        " GROUP BY type, currency, verified, fraud_action",
        *args,
        [ConversionState.ATTRIBUTED.value, ConversionState.REFUNDED.value],
    )
    rewards = await pool.fetch(
        "SELECT currency, state, sum(amount_minor) AS amount FROM reward_balances"
        f" WHERE {scope} GROUP BY currency, state",
        *args,
    )
    counts = {"signup": 0, "purchase": 0, "refund": 0, "renewal": 0}
    revenue: dict[str, int] = {}
    unverified = 0
    fraud_counts = {action: 0 for action in ("flag", "hold", "reject")}
    fraud_amounts: dict[str, dict[str, int]] = {"hold": {}, "reject": {}}
    for row in conversions:
        if not row["verified"]:
            unverified += row["n"]
            continue
        action = row["fraud_action"]
        if action in fraud_counts and row["type"] != "refund":
            fraud_counts[action] += row["n"]
            if action in fraud_amounts and row["currency"] and row["type"] == "purchase":
                amounts = fraud_amounts[action]
                amounts[row["currency"]] = amounts.get(row["currency"], 0) + int(row["amount"])
        if action == "reject":
            continue
        counts[row["type"]] += row["n"]
        if row["currency"] and row["type"] in ("purchase", "renewal", "refund"):
            sign = -1 if row["type"] == "refund" else 1
            revenue[row["currency"]] = revenue.get(row["currency"], 0) + sign * int(row["amount"])
    by_currency: dict[str, dict[str, int]] = {}
    for row in rewards:
        bucket = by_currency.setdefault(row["currency"].strip(), {s.value: 0 for s in STATES})
        bucket[row["state"]] += int(row["amount"])
    return {
        "signups": counts["signup"],
        "purchases": counts["purchase"],
        "refunds": counts["refund"],
        "renewals": counts["renewal"],
        "unverified_orders": unverified,
        "flagged_conversions": fraud_counts["flag"],
        "held_conversions": fraud_counts["hold"],
        "rejected_conversions": fraud_counts["reject"],
        "held_orders_minor": fraud_amounts["hold"],
        "rejected_orders_minor": fraud_amounts["reject"],
        "revenue_minor": revenue,
        "rewards_minor": by_currency,
    }


# The verified conversions that count (as in the funnel: rejected ones apart) of a program
# between two UTC days ($3, $4; $5: the states).
_COUNTED = (
    " c.merchant_id = $1 AND c.program_id = $2 AND c.verified AND c.fraud_action <> 'reject'"
    " AND c.state = ANY($5::text[]) AND c.type IN ('signup', 'purchase', 'renewal')"
    " AND c.occurred_at >= $3::date AND c.occurred_at < $4::date + 1"
)
_COUNTED_STATES = [ConversionState.ATTRIBUTED.value, ConversionState.REFUNDED.value]


def _bucket(**key: Any) -> dict[str, Any]:
    return {**key, "clicks": 0, "bot_clicks": 0, "flagged_clicks": 0, "signups": 0,
            "purchases": 0, "renewals": 0, "revenue_minor": {}}  # fmt: skip


def _add_conversions(bucket: dict[str, Any], row: Any) -> None:
    bucket[row["type"] + "s"] += row["n"]
    if row["currency"] and row["type"] != "signup":
        revenue, currency = bucket["revenue_minor"], row["currency"].strip()
        revenue[currency] = revenue.get(currency, 0) + int(row["amount"])


async def program_daily(
    pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID, start: date, end: date
) -> list[dict[str, Any]]:
    """Per UTC day from `start` to `end` (inclusive): clicks from the flusher's daily counts
    (never the click log), verified signups, purchases and revenue (rejected conversions
    apart, as in the funnel). Days without anything are listed with zeros."""
    clicks = await pool.fetch(
        "SELECT day, human, bot, flagged FROM program_click_counts WHERE merchant_id = $1"
        " AND program_id = $2 AND day BETWEEN $3 AND $4",
        merchant_id, program_id, start, end,
    )  # fmt: skip
    conversions = await pool.fetch(
        "SELECT (c.occurred_at AT TIME ZONE 'UTC')::date AS day, c.type, c.currency,"
        f" count(*) AS n, sum(c.amount_minor) AS amount FROM conversions c WHERE {_COUNTED}"
        " GROUP BY 1, 2, 3",
        merchant_id, program_id, start, end, _COUNTED_STATES,
    )  # fmt: skip
    days: dict[date, dict[str, Any]] = {}
    current = start
    while current <= end:
        days[current] = _bucket(day=current)
        current += timedelta(days=1)
    for row in clicks:
        days[row["day"]].update(clicks=row["human"], bot_clicks=row["bot"],
                                flagged_clicks=row["flagged"])  # fmt: skip
    for row in conversions:
        _add_conversions(days[row["day"]], row)
    return list(days.values())


async def program_channels(
    pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID, start: date, end: date
) -> list[dict[str, Any]]:
    """Per channel of the links clicked, from `start` to `end` (UTC days): clicks from the
    flusher's per-channel daily counts, and the verified conversions attributed to a click on
    a link of that channel (a conversion by referral code or cookie has no channel)."""
    clicks = await pool.fetch(
        "SELECT channel, sum(human)::bigint AS human, sum(bot)::bigint AS bot,"
        " sum(flagged)::bigint AS flagged FROM program_channel_counts WHERE merchant_id = $1"
        " AND program_id = $2 AND day BETWEEN $3 AND $4 GROUP BY channel",
        merchant_id, program_id, start, end,
    )  # fmt: skip
    conversions = await pool.fetch(
        "SELECT l.channel, c.type, c.currency, count(*) AS n, sum(c.amount_minor) AS amount"
        " FROM conversions c JOIN clicks k ON k.click_id = c.attributed_click_id"
        f" JOIN links l ON l.id = k.link_id WHERE {_COUNTED} GROUP BY 1, 2, 3",
        merchant_id, program_id, start, end, _COUNTED_STATES,
    )  # fmt: skip
    channels: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return channels.setdefault(name, _bucket(channel=name))

    for row in clicks:
        entry(row["channel"]).update(clicks=row["human"], bot_clicks=row["bot"],
                                     flagged_clicks=row["flagged"])  # fmt: skip
    for row in conversions:
        _add_conversions(entry(row["channel"]), row)
    return sorted(channels.values(), key=lambda c: (-c["clicks"], c["channel"]))
