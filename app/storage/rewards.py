"""Rewards and their append-only ledger (reward_entries).

A reward's amount in a state is what entered the state minus what left it. Creating a reward
puts its amount in "pending"; approval moves it to "approved", payout to "paid"; a refund moves
a share to "reversed" from wherever it sits (pending first, then approved, then paid: a clawback).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.attribution.rewards import RewardDraft

STATES = ("pending", "approved", "paid", "reversed", "rejected")
# Where a reversal takes money from, in order.
_REVERSIBLE = ("pending", "approved", "paid")


async def create_reward(
    conn: asyncpg.Connection,
    *,
    merchant_id: UUID,
    program_id: UUID,
    advocate_id: UUID,
    conversion_id: UUID,
    customer_id: str | None,
    rules_version: int,
    draft: RewardDraft,
    reason: str,
) -> UUID:
    reward_id = await conn.fetchval(
        "INSERT INTO rewards (merchant_id, program_id, advocate_id, conversion_id, beneficiary,"
        " customer_id, amount_minor, currency, rules_version, hold_until)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
        merchant_id, program_id, advocate_id, conversion_id, draft.beneficiary, customer_id,
        draft.amount_minor, draft.currency, rules_version, draft.hold_until,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO reward_entries (reward_id, merchant_id, from_state, to_state, amount_minor,"
        " reason, conversion_id) VALUES ($1, $2, NULL, 'pending', $3, $4, $5)",
        reward_id, merchant_id, draft.amount_minor, reason, conversion_id,
    )  # fmt: skip
    return reward_id


async def balances(
    conn: asyncpg.Connection | asyncpg.Pool, reward_ids: list[UUID]
) -> dict[UUID, dict[str, int]]:
    rows = await conn.fetch(
        "SELECT reward_id, state, amount_minor FROM reward_balances"
        " WHERE reward_id = ANY($1::uuid[])",
        reward_ids,
    )
    out: dict[UUID, dict[str, int]] = {r: dict.fromkeys(STATES, 0) for r in reward_ids}
    for row in rows:
        out[row["reward_id"]][row["state"]] = int(row["amount_minor"])
    return out


def current_state(balance: dict[str, int]) -> str:
    """The state holding the reward's money (the furthest along), or where it all went."""
    for state in ("paid", "approved", "pending"):
        if balance[state] > 0:
            return state
    return "rejected" if balance["rejected"] > 0 else "reversed"


async def reverse(
    conn: asyncpg.Connection,
    reward_id: UUID,
    merchant_id: UUID,
    amount_minor: int,
    balance: dict[str, int],
    reason: str,
    refund_id: UUID,
) -> None:
    remaining = amount_minor
    for state in _REVERSIBLE:
        take = min(remaining, balance[state])
        if take <= 0:
            continue
        await conn.execute(
            "INSERT INTO reward_entries (reward_id, merchant_id, from_state, to_state,"
            " amount_minor, reason, conversion_id) VALUES ($1, $2, $3, 'reversed', $4, $5, $6)",
            reward_id, merchant_id, state, take, reason, refund_id,
        )  # fmt: skip
        remaining -= take
        if remaining == 0:
            break


async def lock_due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[UUID]:
    """Lock (in id order) up to `limit` rewards whose hold is over and that still hold a pending
    amount. Waits for anyone moving them now (a refund, a rejection, another scheduler)."""
    rows = await conn.fetch(
        "SELECT r.id FROM rewards r WHERE r.hold_until <= $1 AND EXISTS ("
        " SELECT 1 FROM reward_balances b WHERE b.reward_id = r.id AND b.state = 'pending'"
        " AND b.amount_minor > 0) ORDER BY r.id LIMIT $2 FOR UPDATE OF r",
        now,
        limit,
    )
    return [r["id"] for r in rows]


async def approve_pending(conn: asyncpg.Connection, reward_ids: list[UUID]) -> int:
    """Move what the (locked) rewards hold in pending to approved; read after the lock, so
    what another transaction moved meanwhile is not moved twice. Returns rewards approved."""
    status = await conn.execute(
        """
        INSERT INTO reward_entries (reward_id, merchant_id, from_state, to_state, amount_minor,
                                    reason)
        SELECT b.reward_id, b.merchant_id, 'pending', 'approved', b.amount_minor,
               'hold period over'
        FROM reward_balances b
        WHERE b.reward_id = ANY($1::uuid[]) AND b.state = 'pending' AND b.amount_minor > 0
        """,
        reward_ids,
    )
    return int(status.rsplit(" ", 1)[-1])


async def rewards_of_conversion(
    conn: asyncpg.Connection | asyncpg.Pool,
    merchant_id: UUID,
    conversion_id: UUID,
    *,
    lock: bool = False,
) -> list[dict[str, Any]]:
    """The conversion's rewards with their balances. With `lock` (inside a transaction), the
    rewards are locked first, in id order, so the balances read are the ones moved from."""
    if lock:
        await conn.execute(
            "SELECT 1 FROM rewards WHERE merchant_id = $1 AND conversion_id = $2"
            " ORDER BY id FOR UPDATE",
            merchant_id,
            conversion_id,
        )
    rows = await conn.fetch(
        "SELECT id, beneficiary, amount_minor, currency, hold_until FROM rewards"
        " WHERE merchant_id = $1 AND conversion_id = $2 ORDER BY beneficiary",
        merchant_id,
        conversion_id,
    )
    sums = await balances(conn, [r["id"] for r in rows])
    return [
        {**dict(r), "balances": sums[r["id"]], "state": current_state(sums[r["id"]])} for r in rows
    ]


async def move(
    pool: asyncpg.Pool, merchant_id: UUID, reward_id: UUID, from_states: tuple[str, ...],
    to_state: str, reason: str,
) -> tuple[int, dict[str, int]] | None:  # fmt: skip
    """Move everything the reward holds in `from_states` to `to_state`, as ledger entries.
    Returns (amount moved, new balances), or None when the reward is not the merchant's."""
    async with pool.acquire() as conn, conn.transaction():
        owner = await conn.fetchval(
            "SELECT merchant_id FROM rewards WHERE id = $1 FOR UPDATE", reward_id
        )
        if owner != merchant_id:
            return None
        balance = (await balances(conn, [reward_id]))[reward_id]
        moved = sum(balance[state] for state in from_states)
        for state in from_states:
            if balance[state] > 0:
                await conn.execute(
                    "INSERT INTO reward_entries (reward_id, merchant_id, from_state, to_state,"
                    " amount_minor, reason) VALUES ($1, $2, $3, $4, $5, $6)",
                    reward_id, merchant_id, state, to_state, balance[state], reason,
                )  # fmt: skip
        return moved, (await balances(conn, [reward_id]))[reward_id]
