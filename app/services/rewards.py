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
    CLAWBACK_SOURCES,
    MOVES,
    Balances,
    LedgerAction,
    Move,
    current_state,
    plan_reversal,
    plan_transition,
)
from app.attribution.refunds import reversal_amount
from app.errors import InvalidInput, NotFound
from app.services.tx import transaction
from app.storage import payouts as payouts_repo
from app.storage import rewards as rewards_repo
from app.storage.conversions import SignedPurchase

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


async def reverse_order_share(
    conn: asyncpg.Connection, merchant: UUID, purchase: SignedPurchase, refunded_minor: int,
    reason: str, refund_id: UUID | None = None,
) -> int:  # fmt: skip
    """Take back from each reward of the purchase the share its order no longer holds once
    `refunded_minor` of it is refunded (cumulative, rounded down: attribution/refunds), from
    wherever the money sits; what comes out of paid or in-flight money the advocate owes. The
    caller holds the order's lock. Returns the amount moved."""
    await rewards_repo.lock_rewards_of_conversion(conn, merchant, purchase.id)
    moved = 0
    for reward in await rewards_repo.rewards_of_conversion(conn, merchant, purchase.id):
        balance = reward["balances"]
        due = reversal_amount(reward["amount_minor"], balance["reversed"], purchase.amount_minor,
                              refunded_minor)  # fmt: skip
        moves = plan_reversal(balance, due) if due else []
        if moves:
            await rewards_repo.write_moves(conn, reward["id"], merchant, moves, reason, refund_id)
            await record_clawbacks(conn, merchant, purchase.advocate_id, reward["currency"],
                                   reward["id"], reward["beneficiary"], moves, reason)  # fmt: skip
            moved += sum(m.amount_minor for m in moves)
    return moved


async def record_clawbacks(
    conn: asyncpg.Connection, merchant: UUID, advocate: UUID | None, currency: str,
    reward_id: UUID, beneficiary: str, moves: list[Move], reason: str,
) -> None:  # fmt: skip
    """An advocate owes what a reversal took from money already paid (app/services/payouts.py
    nets it in their next payout line; what it took from a line in flight is owed when that
    line is paid)."""
    if beneficiary != "advocate" or advocate is None:
        return
    taken = sum(m.amount_minor for m in moves if m.source in CLAWBACK_SOURCES)
    if taken:
        await payouts_repo.add_owed(conn, merchant, advocate, currency, taken,
                                    f"clawback: {reason}", reward=reward_id)  # fmt: skip
