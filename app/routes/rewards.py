"""Reward transitions made by people: paying out approved rewards, rejecting fraudulent ones.

Each is a ledger entry (reward_entries); the history is never rewritten.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.errors import InvalidInput, NotFound
from app.routes.deps import CurrentMerchant, Pool
from app.storage import rewards as rewards_repo

router = APIRouter(prefix="/v1/rewards", tags=["rewards"])


class Transition(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="Shown in the ledger.")


class Balances(BaseModel):
    id: UUID
    state: str
    balances: dict[str, int]


async def _move(
    pool: asyncpg.Pool, merchant_id: UUID, reward_id: UUID, sources: tuple[str, ...], target: str,
    reason: str,
) -> dict[str, Any]:  # fmt: skip
    result = await rewards_repo.move(pool, merchant_id, reward_id, sources, target, reason)
    if result is None:
        raise NotFound("reward not found", field="reward_id")
    moved, balance = result
    if not moved:
        raise InvalidInput(
            f"nothing to move: the reward holds nothing in {' or '.join(sources)}",
            field="reward_id",
            code="invalid_state",
        )
    return {"id": reward_id, "state": rewards_repo.current_state(balance), "balances": balance}


@router.post("/{reward_id}/paid", response_model=Balances)
async def mark_paid(
    reward_id: UUID, body: Transition, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Record that the approved amount was paid out (e.g. a payout reference as the reason)."""
    return await _move(pool, merchant.id, reward_id, ("approved",), "paid", body.reason)


@router.post("/{reward_id}/reject", response_model=Balances)
async def reject(
    reward_id: UUID, body: Transition, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Refuse to pay a reward (fraud), with a reason a person can read."""
    return await _move(
        pool, merchant.id, reward_id, ("pending", "approved"), "rejected", body.reason
    )
