"""Statistics: clicks → signups → purchases → revenue → rewards, per program or per advocate.

Reward amounts come from the ledger (reward_balances), so the statistics always equal it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from app.storage.rewards import STATES


async def funnel(
    pool: asyncpg.Pool,
    merchant_id: UUID,
    *,
    program_id: UUID | None = None,
    advocate_id: UUID | None = None,
) -> dict[str, Any]:
    scope = "merchant_id = $1 AND ($2::uuid IS NULL OR program_id = $2)" \
            " AND ($3::uuid IS NULL OR advocate_id = $3)"  # fmt: skip
    args = (merchant_id, program_id, advocate_id)
    clicks = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE NOT is_bot) AS human,"
        " count(*) FILTER (WHERE is_bot) AS bot,"
        " count(DISTINCT visitor_id) FILTER (WHERE NOT is_bot) AS visitors"
        f" FROM clicks WHERE {scope}",
        *args,
    )
    conversions = await pool.fetch(
        "SELECT type, currency, count(*) AS n, sum(amount_minor) AS amount FROM conversions"
        f" WHERE {scope} AND state IN ('attributed', 'refunded') GROUP BY type, currency",
        *args,
    )
    rewards = await pool.fetch(
        "SELECT currency, state, sum(amount_minor) AS amount FROM reward_balances"
        f" WHERE {scope} GROUP BY currency, state",
        *args,
    )
    counts = {"signup": 0, "purchase": 0, "refund": 0}
    revenue: dict[str, int] = {}
    for row in conversions:
        counts[row["type"]] += row["n"]
        if row["currency"] and row["type"] in ("purchase", "refund"):
            sign = 1 if row["type"] == "purchase" else -1
            revenue[row["currency"]] = revenue.get(row["currency"], 0) + sign * int(row["amount"])
    by_currency: dict[str, dict[str, int]] = {}
    for row in rewards:
        bucket = by_currency.setdefault(row["currency"].strip(), dict.fromkeys(STATES, 0))
        bucket[row["state"]] += int(row["amount"])
    return {
        "clicks": clicks["human"],
        "bot_clicks": clicks["bot"],
        "unique_visitors": clicks["visitors"],
        "signups": counts["signup"],
        "purchases": counts["purchase"],
        "refunds": counts["refund"],
        "revenue_minor": revenue,
        "rewards_minor": by_currency,
    }
