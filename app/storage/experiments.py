"""Reward experiments in SQL: experiments and their variants, the advocates' assignments, and
the per-advocate figures the results are computed from. The statistics are
app/attribution/experiments.py's; the transactions app/services/experiments.py's."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from app.attribution.rules import ProgramRules

Db = asyncpg.Connection | asyncpg.Pool

_COLUMNS = (
    "id, program_id, name, status, baseline_rate, minimum_detectable_effect, alpha, power,"
    " started_at, ended_at, results, promoted_variant, promoted_rules_version"
)


async def create(
    conn: asyncpg.Connection, merchant: UUID, program: UUID, *, name: str, baseline: float,
    effect: float, alpha: float, power: float,
    variants: list[tuple[str, int, ProgramRules, str | None]],
) -> UUID | None:  # fmt: skip
    """The experiment and its variants; None when the program already runs one."""
    experiment: UUID | None = await conn.fetchval(
        "INSERT INTO experiments (merchant_id, program_id, name, baseline_rate,"
        " minimum_detectable_effect, alpha, power) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (program_id) WHERE status = 'running' DO NOTHING RETURNING id",
        merchant, program, name, baseline, effect, alpha, power,
    )  # fmt: skip
    if experiment is None:
        return None
    await conn.executemany(
        "INSERT INTO experiment_variants (experiment_id, key, position, weight, rules,"
        " share_message) VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
        [
            (experiment, key, i, weight, _json(rules), message)
            for i, (key, weight, rules, message) in enumerate(variants)
        ],
    )
    return experiment


def _json(rules: ProgramRules) -> str:
    return orjson.dumps(rules.model_dump(mode="json")).decode()


async def get(
    db: Db, merchant: UUID, experiment: UUID, *, lock: bool = False
) -> dict[str, Any] | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM experiments WHERE merchant_id = $1 AND id = $2"
        + (" FOR UPDATE" if lock else ""),
        merchant,
        experiment,
    )
    if row is None:
        return None
    return {**_plain(row), "variants": await variants(db, experiment)}


def _plain(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for name in ("baseline_rate", "minimum_detectable_effect", "alpha", "power"):
        out[name] = float(out[name])
    if out["results"] is not None:
        out["results"] = orjson.loads(out["results"])
    return out


async def variants(db: Db, experiment: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT v.key, v.weight, v.rules, v.share_message,"
        " (SELECT count(*) FROM experiment_assignments a"
        "  WHERE a.experiment_id = v.experiment_id AND a.variant = v.key) AS advocates"
        " FROM experiment_variants v WHERE v.experiment_id = $1 ORDER BY v.position",
        experiment,
    )
    return [
        {**dict(r), "rules": ProgramRules.model_validate(orjson.loads(r["rules"]))} for r in rows
    ]


async def list_for_program(db: Db, merchant: UUID, program: UUID) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM experiments WHERE merchant_id = $1 AND program_id = $2"
        " ORDER BY started_at, id",
        merchant,
        program,
    )
    return [{**_plain(r), "variants": await variants(db, r["id"])} for r in rows]


Running = tuple[UUID, list[tuple[str, int]]]  # the experiment, its variants' (key, weight)


async def running(db: Db, programs: list[UUID]) -> dict[UUID, Running]:
    """Each program's running experiment (of those that have one) and its variants' (key,
    weight), in order."""
    rows = await db.fetch(
        "SELECT e.program_id, e.id, v.key, v.weight FROM experiments e"
        " JOIN experiment_variants v ON v.experiment_id = e.id"
        " WHERE e.program_id = ANY($1::uuid[]) AND e.status = 'running'"
        " ORDER BY e.program_id, v.position",
        programs,
    )
    out: dict[UUID, Running] = {}
    for r in rows:
        out.setdefault(r["program_id"], (r["id"], []))[1].append((r["key"], r["weight"]))
    return out


async def variant_rules(db: Db, experiment: UUID, key: str) -> ProgramRules:
    raw = await db.fetchval(
        "SELECT rules FROM experiment_variants WHERE experiment_id = $1 AND key = $2",
        experiment,
        key,
    )
    return ProgramRules.model_validate(orjson.loads(raw))


async def assign(db: Db, experiment: UUID, pairs: list[tuple[UUID, str]]) -> None:
    """Store assignments (advocate, variant); an advocate keeps the first one stored."""
    await db.executemany(
        "INSERT INTO experiment_assignments (experiment_id, advocate_id, variant)"
        " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(experiment, advocate, variant) for advocate, variant in pairs],
    )


async def assigned_variant(db: Db, experiment: UUID, advocate: UUID) -> str | None:
    variant: str | None = await db.fetchval(
        "SELECT variant FROM experiment_assignments WHERE experiment_id = $1 AND advocate_id = $2",
        experiment,
        advocate,
    )
    return variant


async def program_advocates(db: Db, program: UUID) -> list[UUID]:
    rows = await db.fetch("SELECT id FROM advocates WHERE program_id = $1 ORDER BY id", program)
    return [r["id"] for r in rows]


async def per_advocate(
    db: Db, experiment: UUID, currency: str, since: datetime, until: datetime | None
) -> list[dict[str, Any]]:
    """Per assigned advocate: variant, human clicks in the experiment's period, friends'
    conversions (signups and purchases, not rejected), their revenue (purchases in the program
    currency) and what their rewards cost (both sides, except what was rejected or reversed)."""
    rows = await db.fetch(
        """
        SELECT a.variant, a.advocate_id,
               (SELECT count(*) FROM clicks k WHERE k.advocate_id = a.advocate_id
                  AND k.clicked_at >= $3 AND ($4::timestamptz IS NULL OR k.clicked_at < $4)
                  AND NOT k.is_bot AND NOT k.flood) AS clicks,
               coalesce(c.conversions, 0) AS conversions,
               coalesce(c.revenue, 0) AS revenue,
               coalesce((SELECT sum(b.amount_minor) FROM rewards r
                  JOIN reward_balances b ON b.reward_id = r.id
                  WHERE r.experiment_id = a.experiment_id AND r.advocate_id = a.advocate_id
                  AND b.state IN ('pending', 'held', 'approved', 'paid')), 0) AS cost
        FROM experiment_assignments a
        LEFT JOIN LATERAL (
            SELECT count(*) AS conversions,
                   sum(amount_minor) FILTER (WHERE type = 'purchase' AND currency = $2) AS revenue
            FROM conversions
            WHERE experiment_id = a.experiment_id AND advocate_id = a.advocate_id
              AND type IN ('signup', 'purchase') AND verified AND fraud_action <> 'reject'
        ) c ON true
        WHERE a.experiment_id = $1
        ORDER BY a.variant, a.advocate_id
        """,
        experiment, currency, since, until,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def end(
    conn: asyncpg.Connection, experiment: UUID, results: dict[str, Any], now: datetime
) -> None:
    await conn.execute(
        "UPDATE experiments SET status = 'ended', ended_at = $2, results = $3::jsonb"
        " WHERE id = $1 AND status = 'running'",
        # asyncpg's UUIDs are a subclass orjson does not take: written as their text.
        experiment, now, orjson.dumps(results, default=str).decode(),
    )  # fmt: skip


async def set_promoted(
    conn: asyncpg.Connection, experiment: UUID, variant: str, version: int
) -> None:
    await conn.execute(
        "UPDATE experiments SET promoted_variant = $2, promoted_rules_version = $3 WHERE id = $1",
        experiment,
        variant,
        version,
    )
