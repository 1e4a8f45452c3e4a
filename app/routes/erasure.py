"""Erasure of a customer or an advocate (app/services/erasure.py): personal data goes, the books
stay."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter

from app.routes.deps import AppSettings, CurrentMerchant, Pool, RedisConn
from app.schemas import CustomerErasure, Erasure
from app.services import erasure as service

router = APIRouter(tags=["privacy"])

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Queued events are not stored yet: retry shortly."}
}


@router.post("/v1/customers/erase", response_model=Erasure, responses=_UNAVAILABLE)
async def erase_customer(
    body: CustomerErasure, merchant: CurrentMerchant, pool: Pool, redis: RedisConn,
    settings: AppSettings,
) -> Any:  # fmt: skip
    """Erase a shopper (a referred customer) by your customer id, their email, or both:
    every conversion, click, reward and record of theirs keeps its amounts and loses the
    person. Idempotent. The request body is not kept in the audit trail."""
    return await service.erase_customer(
        pool, redis, settings, merchant.id, body.customer_id, body.customer_email
    )


@router.post("/v1/advocates/{advocate_id}/erase", response_model=Erasure, responses=_UNAVAILABLE)
async def erase_advocate(
    advocate_id: UUID, merchant: CurrentMerchant, pool: Pool, redis: RedisConn,
    settings: AppSettings,
) -> Any:  # fmt: skip
    """Erase an advocate: name, emails, payout details and your id for them go; their links stop;
    their rewards, payouts and statistics stay. Idempotent."""
    return await service.erase_advocate(pool, redis, settings, merchant.id, advocate_id)
