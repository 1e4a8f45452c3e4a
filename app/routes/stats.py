"""Statistics for merchants (API key) and for advocates themselves (an opaque, revocable,
expiring token)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response

from app.routes.deps import AppSettings, CurrentMerchant, Pool, RedisConn
from app.schemas import (
    AdvocatePage,
    AdvocateToken,
    AdvocateTokenInfo,
    ChannelBreakdown,
    DailySeries,
    Day,
    Funnel,
)
from app.services import stats as service

router = APIRouter(tags=["statistics"])


@router.get("/v1/programs/{program_id}/stats", response_model=Funnel)
async def program_stats(
    program_id: UUID, merchant: CurrentMerchant, pool: Pool, redis: RedisConn
) -> Any:
    """The program's funnel; `unique_visitors` is estimated (within about 1 %), and null while
    Redis is unreachable."""
    return await service.program_stats(pool, redis, merchant.id, program_id)


@router.get("/v1/programs/{program_id}/daily", response_model=DailySeries)
async def program_daily(
    program_id: UUID, merchant: CurrentMerchant, pool: Pool,
    start: Annotated[Day | None, Query(description="First UTC day (default: end - 29)")] = None,
    end: Annotated[Day | None, Query(description="Last UTC day (default: today)")] = None,
) -> Any:  # fmt: skip
    """Per day: clicks (bots and flood-flagged apart), signups, purchases, renewals and revenue
    — the series the charts draw, read from daily counts (never the click log)."""
    return await service.program_daily(pool, merchant.id, program_id, start, end,
                                       datetime.now(UTC).date())  # fmt: skip


@router.get("/v1/programs/{program_id}/channels", response_model=ChannelBreakdown)
async def program_channels(
    program_id: UUID, merchant: CurrentMerchant, pool: Pool,
    start: Annotated[Day | None, Query(description="First UTC day (default: end - 29)")] = None,
    end: Annotated[Day | None, Query(description="Last UTC day (default: today)")] = None,
) -> Any:  # fmt: skip
    """Per channel of the links (email, WhatsApp, QR, …): clicks, and the conversions attributed
    to a click on a link of that channel, over a period — from daily counts, never the click
    log."""
    return await service.program_channels(pool, merchant.id, program_id, start, end,
                                          datetime.now(UTC).date())  # fmt: skip


@router.get("/v1/advocates/{advocate_id}/stats", response_model=Funnel)
async def advocate_stats(advocate_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Any:
    return await service.advocate_stats(pool, merchant.id, advocate_id)


@router.post("/v1/advocates/{advocate_id}/dashboard-token", response_model=AdvocateToken)
async def create_advocate_token(
    advocate_id: UUID,
    merchant: CurrentMerchant,
    pool: Pool,
    settings: AppSettings,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> Any:
    """A link to hand to the advocate: it shows their own page only, until it expires or is
    revoked. The token is shown once."""
    return await service.dashboard_token(
        pool, settings, merchant.id, advocate_id, days, datetime.now(UTC)
    )


@router.get("/v1/advocates/{advocate_id}/dashboard-tokens", response_model=list[AdvocateTokenInfo])
async def list_advocate_tokens(advocate_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Any:
    """The advocate's tokens (never the tokens themselves)."""
    return await service.list_dashboard_tokens(pool, merchant.id, advocate_id)


@router.delete("/v1/advocates/{advocate_id}/dashboard-tokens/{token_id}", status_code=204)
async def revoke_advocate_token(
    advocate_id: UUID, token_id: UUID, merchant: CurrentMerchant, pool: Pool
) -> Response:
    """The token stops working at once."""
    await service.revoke_dashboard_token(pool, merchant.id, advocate_id, token_id)
    return Response(status_code=204)


@router.get("/v1/advocate/stats", response_model=AdvocatePage)
async def my_stats(
    pool: Pool, settings: AppSettings, token: Annotated[str, Query(max_length=400)]
) -> Any:
    """An advocate's own page, with the token from their dashboard link."""
    return await service.own_stats(pool, settings, token, datetime.now(UTC))
