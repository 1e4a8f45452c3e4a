"""Rewards and their append-only ledger (`reward_entries`), in SQL. Which moves are allowed, and
from where a reversal takes, is decided in app/attribution/ledger.py; the transactions are the
services' (app/services/rewards.py, app/services/processing.py)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import NamedTuple, cast
from uuid import UUID, uuid4

import asyncpg

from app.attribution.ledger import Balances, Move, current_state, empty_balances
from app.attribution.rewards import RewardDraft
from app.storage.rows import RewardRow

Db = asyncpg.Connection | asyncpg.Pool


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
    fx: tuple[Decimal, str, int] | None = None,
    variant: tuple[UUID, str] | None = None,
) -> UUID:
    """The reward and its first entry (pending), in one statement; its id."""
    reward = NewReward(uuid4(), merchant_id, program_id, advocate_id, conversion_id, customer_id,
                       rules_version, draft, reason, fx, variant)  # fmt: skip
    await create_rewards(conn, [reward])
    return reward.id


class NewReward(NamedTuple):
    id: UUID
    merchant_id: UUID
    program_id: UUID
    advocate_id: UUID
    conversion_id: UUID
    customer_id: str | None
    rules_version: int
    draft: RewardDraft
    reason: str
    # The rate an order in another currency was converted at, with the order's currency and
    # amount; the experiment and the variant whose rules computed the reward.
    fx: tuple[Decimal, str, int] | None = None
    variant: tuple[UUID, str] | None = None


async def create_rewards(conn: asyncpg.Connection, rewards: list[NewReward]) -> None:
    """Rewards (ids chosen by the caller) and their first entries (pending), in one
    statement."""
    if not rewards:
        return
    fx = [r.fx or (None, None, None) for r in rewards]
    variants = [r.variant or (None, None) for r in rewards]
    await conn.execute(
        "WITH input AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[],"
        "  $5::uuid[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::int[],"
        "  $11::timestamptz[], $12::text[], $13::numeric[], $14::text[], $15::bigint[],"
        "  $16::uuid[], $17::text[]) AS t(id, merchant_id, program_id, advocate_id,"
        "  conversion_id, beneficiary, customer_id, amount_minor, currency, rules_version,"
        "  hold_until, reason, fx_rate, order_currency, order_amount_minor, experiment_id,"
        "  variant)),"
        " reward AS (INSERT INTO rewards (id, merchant_id, program_id, advocate_id,"
        "  conversion_id, beneficiary, customer_id, amount_minor, currency, rules_version,"
        "  hold_until, fx_rate, order_currency, order_amount_minor, experiment_id, variant)"
        "  SELECT id, merchant_id, program_id, advocate_id, conversion_id, beneficiary,"
        "  customer_id, amount_minor, currency, rules_version, hold_until, fx_rate,"
        "  order_currency, order_amount_minor, experiment_id, variant FROM input)"
        " INSERT INTO reward_entries (reward_id, merchant_id, from_state, to_state, amount_minor,"
        " reason, conversion_id) SELECT id, merchant_id, NULL, 'pending', amount_minor, reason,"
        " conversion_id FROM input",
        [r.id for r in rewards], [r.merchant_id for r in rewards],
        [r.program_id for r in rewards], [r.advocate_id for r in rewards],
        [r.conversion_id for r in rewards], [r.draft.beneficiary for r in rewards],
        [r.customer_id for r in rewards], [r.draft.amount_minor for r in rewards],
        [r.draft.currency for r in rewards], [r.rules_version for r in rewards],
        [r.draft.hold_until for r in rewards], [r.reason for r in rewards],
        [rate for rate, _, _ in fx], [currency for _, currency, _ in fx],
        [amount for _, _, amount in fx], [experiment for experiment, _ in variants],
        [key for _, key in variants],
    )  # fmt: skip


async def balances(conn: Db, reward_ids: list[UUID]) -> dict[UUID, Balances]:
    rows = await conn.fetch(
        "SELECT reward_id, state, amount_minor FROM reward_balances"
        " WHERE reward_id = ANY($1::uuid[])",
        reward_ids,
    )
    out: dict[UUID, Balances] = {r: empty_balances() for r in reward_ids}
    for row in rows:
        out[row["reward_id"]][row["state"]] = int(row["amount_minor"])
    return out


async def write_moves(
    conn: asyncpg.Connection,
    reward_id: UUID,
    merchant_id: UUID,
    moves: list[Move],
    reason: str,
    conversion_id: UUID | None = None,
) -> None:
    """Append the moves as ledger entries (`conversion_id`: the refund behind a reversal)."""
    await conn.executemany(
        "INSERT INTO reward_entries (reward_id, merchant_id, from_state, to_state,"
        " amount_minor, reason, conversion_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            (reward_id, merchant_id, m.source.value, m.target.value, m.amount_minor, reason,
             conversion_id)
            for m in moves
        ],
    )  # fmt: skip


async def lock_reward(conn: asyncpg.Connection, merchant_id: UUID, reward_id: UUID) -> bool:
    """Lock the reward for a move; False when it is not the merchant's (or does not exist)."""
    owner = await conn.fetchval(
        "SELECT merchant_id FROM rewards WHERE id = $1 FOR UPDATE", reward_id
    )
    return bool(owner == merchant_id)


async def lock_rewards(conn: asyncpg.Connection, merchant_id: UUID, reward_ids: list[UUID]) -> None:
    """Lock the rewards, in id order, before their balances are read and moved."""
    await conn.execute(
        "SELECT 1 FROM rewards WHERE merchant_id = $1 AND id = ANY($2::uuid[]) ORDER BY id"
        " FOR UPDATE",
        merchant_id,
        reward_ids,
    )


async def lock_rewards_of_conversion(
    conn: asyncpg.Connection, merchant_id: UUID, conversion_id: UUID
) -> None:
    """Lock a conversion's rewards, in id order, before their balances are read and moved."""
    await conn.execute(
        "SELECT 1 FROM rewards WHERE merchant_id = $1 AND conversion_id = $2"
        " ORDER BY id FOR UPDATE",
        merchant_id,
        conversion_id,
    )


async def rewards_of_conversion(
    conn: Db, merchant_id: UUID, conversion_id: UUID
) -> list[RewardRow]:
    """The conversion's rewards with their balances and current state."""
    rows = await conn.fetch(
        "SELECT id, beneficiary, amount_minor, currency, hold_until FROM rewards"
        " WHERE merchant_id = $1 AND conversion_id = $2 ORDER BY beneficiary",
        merchant_id,
        conversion_id,
    )
    sums = await balances(conn, [r["id"] for r in rows])
    return [
        cast(
            RewardRow,
            {**dict(r), "balances": sums[r["id"]], "state": current_state(sums[r["id"]]).value},
        )
        for r in rows
    ]


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
    """Move what the (locked) rewards hold in pending to approved (ledger.LedgerAction.APPROVE,
    in one statement); read after the lock, so what another transaction moved meanwhile is not
    moved twice. Returns rewards approved."""
    status: str = await conn.execute(
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
