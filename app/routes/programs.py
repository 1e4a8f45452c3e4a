"""Management API: referral programs and their rules."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter

from app.attribution.rules import ProgramRules
from app.routes.deps import CurrentMerchant, Pool, RedisConn
from app.schemas import Program, ProgramCreate, RulesView
from app.services import programs as service

router = APIRouter(prefix="/v1/programs", tags=["programs"])


@router.post("", status_code=201, response_model=Program)
async def create_program(body: ProgramCreate, merchant: CurrentMerchant, pool: Pool) -> Any:
    return await service.create_program(
        pool,
        merchant.id,
        name=body.name,
        destination_url=body.destination_url,
        allowed_domains=body.allowed_domains,
        attribution_window_days=body.attribution_window_days,
        rules=body.rules,
        advocate_sees_amounts=body.advocate_sees_amounts,
        share_text=body.share_text,
    )


@router.get("", response_model=list[Program])
async def list_programs(merchant: CurrentMerchant, pool: Pool) -> Any:
    return await service.list_programs(pool, merchant.id)


@router.get("/{program_id}", response_model=Program)
async def get_program(program_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Any:
    return await service.get_program(pool, merchant.id, program_id)


@router.get("/{program_id}/rules", response_model=RulesView)
async def get_rules(program_id: UUID, merchant: CurrentMerchant, pool: Pool) -> Any:
    return await service.get_rules(pool, merchant.id, program_id)


@router.put("/{program_id}/rules", response_model=RulesView)
async def replace_rules(
    program_id: UUID, body: ProgramRules, merchant: CurrentMerchant, pool: Pool, redis: RedisConn
) -> Any:
    """Store a new version of the rules. Rewards already computed keep their version."""
    return await service.replace_rules(pool, redis, merchant.id, program_id, body)
