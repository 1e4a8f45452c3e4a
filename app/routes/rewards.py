"""Reward transitions made by people: paying out approved rewards, rejecting fraudulent ones.

Each is a ledger entry (reward_entries); the history is never rewritten.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.attribution import ledger
from app.routes.deps import CurrentMerchant, Pool
from app.services import rewards as rewards_service

router = APIRouter(prefix="/v1/rewards", tags=["rewards"])


class Transition(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="Shown in the ledger.")


class Balances(BaseModel):
    id: UUID
    state: str
    balances: dict[str, int]


@router.post("/{reward_id}/paid", response_model=Balances)
async def mark_paid(
    reward_id: UUID, body: Transition, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Record that the approved amount was paid out (e.g. a payout reference as the reason)."""
    moved = await rewards_service.move_reward(
        pool, merchant.id, reward_id, ledger.LedgerAction.PAY, body.reason
    )
    return {"id": moved.reward_id, "state": moved.state, "balances": moved.balances}


@router.post("/{reward_id}/reject", response_model=Balances)
async def reject(
    reward_id: UUID, body: Transition, merchant: CurrentMerchant, pool: Pool
) -> dict[str, Any]:
    """Refuse to pay a reward (fraud), with a reason a person can read."""
    moved = await rewards_service.move_reward(
        pool, merchant.id, reward_id, ledger.LedgerAction.REJECT, body.reason
    )
    return {"id": moved.reward_id, "state": moved.state, "balances": moved.balances}
