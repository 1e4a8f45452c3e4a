"""Referral programs and their versioned rules."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from app.attribution.rules import ProgramRules
from app.destinations import host_of, is_allowed
from app.errors import InvalidInput
from app.pipeline.redis_client import RedisClient
from app.services import links as links_service
from app.services.tenancy import found
from app.services.tx import transaction
from app.storage import programs as programs_repo
from app.storage import rules as rules_repo
from app.storage.rows import ProgramRow

# What an advocate's share buttons prefill unless the program says otherwise ({link}: theirs).
DEFAULT_SHARE_TEXT = "I shop here and think you will like it too: {link}"


async def create_program(
    pool: asyncpg.Pool,
    merchant_id: UUID,
    *,
    name: str,
    destination_url: str,
    allowed_domains: list[str] | None,
    attribution_window_days: int,
    rules: ProgramRules | None,
    advocate_sees_amounts: bool = False,
    share_text: str | None = None,
) -> ProgramRow:
    """A program and its first rules (default: the window given, 10.00 per first purchase)."""
    allowed = allowed_domains or [host_of(destination_url)]
    if not is_allowed(destination_url, allowed):
        raise InvalidInput(
            "destination_url must be on one of allowed_domains", field="body.destination_url"
        )
    rules = rules or ProgramRules(attribution_window_days=attribution_window_days)
    async with transaction(pool) as conn:
        program = await programs_repo.create_program(
            conn,
            merchant_id,
            name=name,
            destination_url=destination_url,
            allowed_domains=allowed,
            attribution_window_days=rules.attribution_window_days,
            advocate_sees_amounts=advocate_sees_amounts,
            share_text=share_text or DEFAULT_SHARE_TEXT,
        )
        await rules_repo.save_rules(conn, program["id"], rules)
    program["attribution_window_days"] = rules.attribution_window_days
    return program


async def list_programs(pool: asyncpg.Pool, merchant_id: UUID) -> list[ProgramRow]:
    return await programs_repo.list_programs(pool, merchant_id)


async def get_program(pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID) -> ProgramRow:
    program = await programs_repo.get_program(pool, merchant_id, program_id)
    return found(program, "program", "program_id")


async def get_rules(pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID) -> dict[str, Any]:
    await get_program(pool, merchant_id, program_id)
    version, rules = (await rules_repo.current_rules(pool, [program_id]))[program_id]
    return {"program_id": program_id, "version": version, "rules": rules}


async def replace_rules(
    pool: asyncpg.Pool, redis: RedisClient, merchant_id: UUID, program_id: UUID,
    rules: ProgramRules,
) -> dict[str, Any]:  # fmt: skip
    """Store a new version of the rules. Rewards already computed keep their version."""
    async with transaction(pool) as conn:
        found(await programs_repo.get_program(conn, merchant_id, program_id), "program",
              "program_id")  # fmt: skip
        version = await rules_repo.save_rules(conn, program_id, rules)
    # The cookie lifetime follows the attribution window: tell every API process.
    await links_service.republish_program_links(pool, redis, program_id)
    return {"program_id": program_id, "version": version, "rules": rules}
