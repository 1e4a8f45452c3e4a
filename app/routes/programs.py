"""Management API: referral programs."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from app.attribution.rules import ProgramRules
from app.destinations import host_of, is_allowed
from app.errors import InvalidInput, NotFound
from app.routes.deps import CurrentMerchant, Pool, Redis
from app.schemas import Program, ProgramCreate, RulesView
from app.services import links as links_service
from app.storage import programs as programs_repo
from app.storage import rules as rules_repo

router = APIRouter(prefix="/v1/programs", tags=["programs"])


@router.post("", status_code=201, response_model=Program)
async def create_program(body: ProgramCreate, merchant: CurrentMerchant, pool: Pool) -> dict:
    allowed = body.allowed_domains or [host_of(body.destination_url)]
    if not is_allowed(body.destination_url, allowed):
        raise InvalidInput(
            "destination_url must be on one of allowed_domains", field="body.destination_url"
        )
    rules = body.rules or ProgramRules(attribution_window_days=body.attribution_window_days)
    async with pool.acquire() as conn, conn.transaction():
        program = await programs_repo.create_program(
            conn,
            merchant.id,
            name=body.name,
            destination_url=body.destination_url,
            allowed_domains=allowed,
            attribution_window_days=rules.attribution_window_days,
        )
        await rules_repo.save_rules(conn, program["id"], rules)
    program["attribution_window_days"] = rules.attribution_window_days
    return program


@router.get("", response_model=list[Program])
async def list_programs(merchant: CurrentMerchant, pool: Pool) -> list[dict]:
    return await programs_repo.list_programs(pool, merchant.id)


@router.get("/{program_id}", response_model=Program)
async def get_program(program_id: UUID, merchant: CurrentMerchant, pool: Pool) -> dict:
    program = await programs_repo.get_program(pool, merchant.id, program_id)
    if program is None:
        raise NotFound("program not found", field="program_id")
    return program


@router.get("/{program_id}/rules", response_model=RulesView)
async def get_rules(program_id: UUID, merchant: CurrentMerchant, pool: Pool) -> dict:
    if await programs_repo.get_program(pool, merchant.id, program_id) is None:
        raise NotFound("program not found", field="program_id")
    version, rules = (await rules_repo.current_rules(pool, [program_id]))[program_id]
    return {"program_id": program_id, "version": version, "rules": rules}


@router.put("/{program_id}/rules", response_model=RulesView)
async def replace_rules(
    program_id: UUID, body: ProgramRules, merchant: CurrentMerchant, pool: Pool, redis: Redis
) -> dict:
    """Store a new version of the rules. Rewards already computed keep their version."""
    async with pool.acquire() as conn, conn.transaction():
        if await programs_repo.get_program(conn, merchant.id, program_id) is None:
            raise NotFound("program not found", field="program_id")
        version = await rules_repo.save_rules(conn, program_id, body)
    # The cookie lifetime follows the attribution window: tell every API process.
    await links_service.republish_program_links(pool, redis, program_id)
    return {"program_id": program_id, "version": version, "rules": body}
