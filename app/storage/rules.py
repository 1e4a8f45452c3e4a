"""Program rules, one row per version (see app.attribution.rules)."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import orjson

from app.attribution.rules import ProgramRules


async def save_rules(conn: asyncpg.Connection, program_id: UUID, rules: ProgramRules) -> int:
    """Store a new version; returns its number. The program's cookie window follows the rules."""
    version = await conn.fetchval(
        "INSERT INTO program_rules (program_id, version, rules)"
        " SELECT $1, coalesce(max(version), 0) + 1, $2::jsonb FROM program_rules"
        " WHERE program_id = $1 RETURNING version",
        program_id,
        orjson.dumps(rules.model_dump(mode="json")).decode(),
    )
    await conn.execute(
        "UPDATE programs SET attribution_window_days = $2 WHERE id = $1",
        program_id,
        rules.attribution_window_days,
    )
    return int(version)


async def current_rules(
    conn: asyncpg.Connection | asyncpg.Pool, program_ids: list[UUID]
) -> dict[UUID, tuple[int, ProgramRules]]:
    return {
        program: (version, ProgramRules.model_validate_json(text))
        for program, (version, text) in (await current_rules_json(conn, program_ids)).items()
    }


async def current_rules_json(
    conn: asyncpg.Connection | asyncpg.Pool, program_ids: list[UUID]
) -> dict[UUID, tuple[int, str]]:
    """The current version of each program's rules, as stored (JSON)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (program_id) program_id, version, rules::text AS rules"
        " FROM program_rules WHERE program_id = ANY($1::uuid[])"
        " ORDER BY program_id, version DESC",
        program_ids,
    )
    return {r["program_id"]: (r["version"], r["rules"]) for r in rows}
