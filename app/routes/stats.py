"""Statistics for merchants (API key) and for advocates themselves (signed, expiring token)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query

from app.errors import NotFound, Unauthorized
from app.routes.deps import AppSettings, CurrentMerchant, Pool, Redis
from app.schemas import AdvocateToken, Funnel
from app.security import InvalidToken, advocate_token, read_advocate_token
from app.storage import advocates as advocates_repo
from app.storage import programs as programs_repo
from app.storage.stats import advocate_funnel, program_funnel

router = APIRouter(tags=["statistics"])


@router.get("/v1/programs/{program_id}/stats", response_model=Funnel)
async def program_stats(
    program_id: UUID, merchant: CurrentMerchant, pool: Pool, redis: Redis
) -> Any:
    """The program's funnel; `unique_visitors` is estimated (within about 1 %), and null while
    Redis is unreachable."""
    if await programs_repo.get_program(pool, merchant.id, program_id) is None:
        raise NotFound("program not found", field="program_id")
    return await program_funnel(pool, redis, merchant.id, program_id)


@router.get("/v1/advocates/{advocate_id}/stats", response_model=Funnel)
async def advocate_stats(advocate_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Any:
    if await advocates_repo.get_advocate(pool, merchant.id, advocate_id) is None:
        raise NotFound("advocate not found", field="advocate_id")
    return await advocate_funnel(pool, merchant.id, advocate_id)


@router.post("/v1/advocates/{advocate_id}/dashboard-token", response_model=AdvocateToken)
async def create_advocate_token(
    advocate_id: UUID,
    merchant: CurrentMerchant,
    pool: Pool,
    settings: AppSettings,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> Any:
    """A link to hand to the advocate: it shows their own statistics only, until it expires."""
    if await advocates_repo.get_advocate(pool, merchant.id, advocate_id) is None:
        raise NotFound("advocate not found", field="advocate_id")
    expires = datetime.now(UTC) + timedelta(days=days)
    token = advocate_token(settings.secret_bytes, merchant.id, advocate_id, expires)
    url = f"{settings.public_base_url.rstrip('/')}/v1/advocate/stats?token={token}"
    return {"token": token, "expires_at": expires, "url": url}


@router.get("/v1/advocate/stats", response_model=Funnel)
async def my_stats(
    pool: Pool, settings: AppSettings, token: Annotated[str, Query(max_length=400)]
) -> Any:
    """An advocate's own statistics, with the token from their dashboard link."""
    try:
        merchant_id, advocate_id = read_advocate_token(
            settings.secret_bytes, token, datetime.now(UTC)
        )
    except InvalidToken as exc:
        raise Unauthorized(f"invalid dashboard token: {exc}", field="query.token") from None
    return await advocate_funnel(pool, merchant_id, advocate_id)
