"""Moving rewards through the ledger: approval once the hold is over (the scheduler), payout and
rejection (people, through the API).

Safe with any number of schedulers (replicas) and flushers at once: each move locks its rewards
first, then reads their balances, so a pending amount is approved once, and an amount rejected or
reversed meanwhile is not approved at all. Which moves exist: app/attribution/ledger.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from app.attribution.ledger import (
    MOVES,
    Balances,
    LedgerAction,
    current_state,
    plan_transition,
)
from app.errors import InvalidInput, NotFound
from app.services.tx import transaction
from app.storage import rewards as rewards_repo

APPROVAL_BATCH = 500


@dataclass(frozen=True, slots=True)
class Moved:
    reward_id: UUID
    state: str
    balances: Balances


async def approve_due(pool: asyncpg.Pool, now: datetime) -> int:
    """Approve every pending amount whose hold period has passed. Returns rewards approved."""
    approved = 0
    while True:
        async with transaction(pool) as conn:
            due = await rewards_repo.lock_due(conn, now, APPROVAL_BATCH)
            if due:
                approved += await rewards_repo.approve_pending(conn, due)
        if len(due) < APPROVAL_BATCH:
            return approved


async def move_reward(
    pool: asyncpg.Pool, merchant_id: UUID, reward_id: UUID, transition: LedgerAction, reason: str
) -> Moved:
    """Make a person's move (payout, rejection) as ledger entries. NotFound for another
    merchant's reward; InvalidInput (invalid_state) when the reward holds nothing to move."""
    async with transaction(pool) as conn:
        if not await rewards_repo.lock_reward(conn, merchant_id, reward_id):
            raise NotFound("reward not found", field="reward_id")
        balance = (await rewards_repo.balances(conn, [reward_id]))[reward_id]
        moves = plan_transition(balance, transition)
        if not moves:
            sources = " or ".join(s.value for s in MOVES[transition][0])
            raise InvalidInput(
                f"nothing to move: the reward holds nothing in {sources}",
                field="reward_id",
                code="invalid_state",
            )
        await rewards_repo.write_moves(conn, reward_id, merchant_id, moves, reason)
        after = (await rewards_repo.balances(conn, [reward_id]))[reward_id]
    return Moved(reward_id, current_state(after).value, after)


async def move_all(
    conn: asyncpg.Connection,
    merchant: UUID,
    reward_ids: list[UUID],
    action: LedgerAction,
    reason: str,
) -> int:
    """The action's moves on each reward (locked by the caller), from balances read after the
    lock; returns the amount moved. (Reviews and payouts move many rewards at once.)"""
    balances = await rewards_repo.balances(conn, reward_ids)
    moved = 0
    for reward_id in reward_ids:
        moves = plan_transition(balances[reward_id], action)
        if moves:
            await rewards_repo.write_moves(conn, reward_id, merchant, moves, reason)
            moved += sum(m.amount_minor for m in moves)
    return moved
