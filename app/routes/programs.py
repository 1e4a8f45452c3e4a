"""Management API: referral programs."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from app.destinations import host_of, is_allowed
from app.errors import InvalidInput, NotFound
from app.routes.deps import CurrentMerchant, Pool
from app.schemas import Program, ProgramCreate
from app.storage import programs as programs_repo

router = APIRouter(prefix="/v1/programs", tags=["programs"])


@router.post("", status_code=201, response_model=Program)
async def create_program(body: ProgramCreate, merchant: CurrentMerchant, pool: Pool) -> dict:
    allowed = body.allowed_domains or [host_of(body.destination_url)]
    if not is_allowed(body.destination_url, allowed):
        raise InvalidInput(
            "destination_url must be on one of allowed_domains", field="body.destination_url"
        )
    return await programs_repo.create_program(
        pool,
        merchant.id,
        name=body.name,
        destination_url=body.destination_url,
        allowed_domains=allowed,
        attribution_window_days=body.attribution_window_days,
    )


@router.get("", response_model=list[Program])
async def list_programs(merchant: CurrentMerchant, pool: Pool) -> list[dict]:
    return await programs_repo.list_programs(pool, merchant.id)


@router.get("/{program_id}", response_model=Program)
async def get_program(program_id: UUID, merchant: CurrentMerchant, pool: Pool) -> dict:
    program = await programs_repo.get_program(pool, merchant.id, program_id)
    if program is None:
        raise NotFound("program not found", field="program_id")
    return program
