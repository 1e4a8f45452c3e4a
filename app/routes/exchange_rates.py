"""Exchange rates the merchant posts, for orders in another currency than the program's."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from app.routes.deps import CurrentMerchant, Pool
from app.services import payouts as payouts_service

router = APIRouter(tags=["payouts"])

CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class Rate(BaseModel):
    base: CurrencyCode = Field(description="The order's currency.")
    quote: CurrencyCode = Field(description="The program's currency.")
    day: date = Field(description="The UTC day of the orders it converts.")
    rate: Annotated[Decimal, Field(gt=0, max_digits=20, decimal_places=10)] = Field(
        description="One unit of base in quote, exactly (a string keeps it exact)."
    )


class RatesIn(BaseModel):
    rates: list[Rate] = Field(min_length=1, max_length=10_000)


@router.put("/v1/exchange-rates", status_code=204)
async def put_rates(body: RatesIn, merchant: CurrentMerchant, pool: Pool) -> Response:
    """Add or replace rates (per base, quote and day)."""
    await payouts_service.put_rates(
        pool, merchant.id, [(r.base, r.quote, r.day, r.rate) for r in body.rates]
    )
    return Response(status_code=204)


@router.get("/v1/exchange-rates", response_model=list[Rate])
async def list_rates(
    merchant: CurrentMerchant, pool: Pool,
    base: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    quote: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:  # fmt: skip
    return await payouts_service.list_rates(pool, merchant.id, base, quote, limit)
