"""Reward experiments: start one, assign advocates, give each conversion its variant's rules,
read the results honestly, end it, promote a variant.

- Starting stores the experiment and assigns every advocate the program has (a deterministic
  hash: app/attribution/experiments.assign_variant); advocates enrolled later are assigned when
  enrolled (app/services/links.py calls `assign_new_advocate` in its transaction), and any
  advocate still without one when a conversion is processed is assigned then. An advocate keeps
  their variant.
- While it runs, a conversion attributed to an assigned advocate is rewarded — and checked by
  the fraud rules — with their variant's rules (attribution itself, which picks the advocate,
  uses the program's); the conversion and its rewards record the experiment and the variant.
- Results are computed from PostgreSQL at each read while it runs, frozen when it ends.
  Promoting a variant stores its rules as the program's next rules version; rewards already
  earned keep the rules they were computed with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from app.attribution import experiments as stats
from app.attribution.rules import ProgramRules
from app.errors import Conflict, InvalidInput
from app.pipeline.redis_client import RedisClient
from app.services import links as links_service
from app.services import programs as programs_service
from app.services.batch_reads import BatchReads
from app.services.tenancy import found
from app.services.tx import transaction
from app.storage import experiments as repo
from app.storage import rules as rules_repo

Variant = tuple[str, int, ProgramRules, str | None]  # key, weight, rules, share message


async def start(
    pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID, *, name: str, baseline: float,
    effect: float, alpha: float, power: float, variants: list[Variant],
) -> dict[str, Any]:  # fmt: skip
    # Through the module: programs imports links, which imports this one.
    await programs_service.get_program(pool, merchant_id, program_id)
    keys = [v[0] for v in variants]
    if len(set(keys)) != len(keys):
        raise InvalidInput("variant keys must differ", field="body.variants")
    async with transaction(pool) as conn:
        _, current = (await rules_repo.current_rules(conn, [program_id]))[program_id]
        for i, (_, _, rules, _) in enumerate(variants):
            if rules.currency != current.currency:
                raise InvalidInput(
                    f"every variant pays in the program currency ({current.currency})",
                    field=f"body.variants.{i}.rules.currency",
                )
        experiment = await repo.create(
            conn, merchant_id, program_id, name=name, baseline=baseline, effect=effect,
            alpha=alpha, power=power, variants=variants,
        )  # fmt: skip
        if experiment is None:
            raise Conflict("the program already runs an experiment: end it first",
                           field="program_id")  # fmt: skip
        weights = [(key, weight) for key, weight, _, _ in variants]
        advocates = await repo.program_advocates(conn, program_id)
        await repo.assign(
            conn, experiment, [(a, stats.assign_variant(experiment, a, weights)) for a in advocates]
        )
    return await get(pool, merchant_id, experiment)


async def assign_new_advocate(
    conn: asyncpg.Connection, program_id: UUID, advocate_id: UUID
) -> None:
    """Assign a newly enrolled advocate to the program's running experiment, if any (the
    caller's transaction)."""
    running = (await repo.running(conn, [program_id])).get(program_id)
    if running is not None:
        experiment, weights = running
        variant = stats.assign_variant(experiment, advocate_id, weights)
        await repo.assign(conn, experiment, [(advocate_id, variant)])


async def offer_for(
    conn: asyncpg.Connection, program_id: UUID, advocate_id: UUID,
    reads: BatchReads | None = None,
) -> tuple[UUID, str, ProgramRules] | None:  # fmt: skip
    """The running experiment's variant for this advocate and its rules, or None (the program's
    rules apply). Assigns the advocate if they have no variant yet. (`reads`: the batch's
    reads of the experiment and its variants' rules.)"""
    reads = reads or BatchReads()
    running = await reads.running(conn, program_id)
    if running is None:
        return None
    experiment, weights = running
    variant = await repo.assigned_variant(conn, experiment, advocate_id)
    if variant is None:
        variant = stats.assign_variant(experiment, advocate_id, weights)
        await repo.assign(conn, experiment, [(advocate_id, variant)])
    return experiment, variant, await reads.variant_rules(conn, experiment, variant)


async def get(pool: asyncpg.Pool | asyncpg.Connection, merchant_id: UUID,
              experiment_id: UUID) -> dict[str, Any]:  # fmt: skip
    experiment = found(
        await repo.get(pool, merchant_id, experiment_id), "experiment", "experiment_id"
    )
    return _shown(experiment)


def _shown(experiment: dict[str, Any]) -> dict[str, Any]:
    required = stats.required_sample_size(
        experiment["baseline_rate"], experiment["minimum_detectable_effect"],
        experiment["alpha"], experiment["power"],
    )  # fmt: skip
    return {**experiment, "required_advocates_per_variant": required}


async def list_for_program(
    pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID
) -> list[dict[str, Any]]:
    await programs_service.get_program(pool, merchant_id, program_id)
    return [_shown(e) for e in await repo.list_for_program(pool, merchant_id, program_id)]


async def results(
    pool: asyncpg.Pool, merchant_id: UUID, experiment_id: UUID, now: datetime
) -> dict[str, Any]:
    experiment = found(
        await repo.get(pool, merchant_id, experiment_id), "experiment", "experiment_id"
    )
    if experiment["results"] is not None:
        frozen: dict[str, Any] = experiment["results"]
        return frozen
    return await _compute(pool, experiment, now)


async def _compute(db: asyncpg.Pool | asyncpg.Connection, experiment: dict[str, Any],
                   now: datetime) -> dict[str, Any]:  # fmt: skip
    currency = experiment["variants"][0]["rules"].currency
    rows = await repo.per_advocate(
        db, experiment["id"], currency, experiment["started_at"], experiment["ended_at"]
    )
    by_variant: dict[str, list[dict[str, Any]]] = {v["key"]: [] for v in experiment["variants"]}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    counts, shown = [], []
    for key, advocates in by_variant.items():
        n = len(advocates)
        clicks = [float(a["clicks"]) for a in advocates]
        conversions = [float(a["conversions"]) for a in advocates]
        revenue = [float(a["revenue"]) for a in advocates]
        cost = [float(a["cost"]) for a in advocates]
        sharers = sum(1 for a in advocates if a["clicks"] > 0)
        referrers = sum(1 for a in advocates if a["conversions"] > 0)
        counts.append(stats.VariantCounts(key, n, referrers))
        shown.append({
            "key": key, "advocates": n, "sharers": sharers, "referrers": referrers,
            "clicks": int(sum(clicks)), "conversions": int(sum(conversions)),
            "revenue_minor": int(sum(revenue)), "reward_cost_minor": int(sum(cost)),
            "share_rate": stats.proportion(sharers, n).as_json(),
            "referral_rate": stats.proportion(referrers, n).as_json(),
            "clicks_per_advocate": stats.mean(clicks).as_json(),
            "friend_conversion_rate": stats.ratio(conversions, clicks).as_json(),
            "revenue_per_advocate_minor": stats.mean(revenue).as_json(),
            "reward_cost_per_conversion_minor": stats.ratio(cost, conversions).as_json(),
            "reward_cost_per_revenue": stats.ratio(cost, revenue).as_json(),
        })  # fmt: skip
    answer = stats.decide(
        counts, experiment["baseline_rate"], experiment["minimum_detectable_effect"],
        experiment["alpha"], experiment["power"],
    )  # fmt: skip
    return {
        "experiment_id": experiment["id"], "status": experiment["status"],
        "as_of": experiment["ended_at"] or now, "currency": currency,
        "answer": {
            "verdict": answer.verdict, "words": answer.words, "winner": answer.winner,
            "required_advocates_per_variant": answer.required_per_variant,
            "metric": "referral_rate",
            "comparisons": [
                {"variant": c.variant, "against": counts[0].key, "difference": c.difference,
                 "low": c.low, "high": c.high, "likelihood_ratio": c.likelihood_ratio,
                 "significant": c.significant}
                for c in answer.comparisons
            ],
        },
        "variants": shown,
    }  # fmt: skip


async def end(
    pool: asyncpg.Pool, merchant_id: UUID, experiment_id: UUID, now: datetime
) -> dict[str, Any]:
    """Freeze the results and stop giving variants' rules (idempotent)."""
    async with transaction(pool) as conn:
        await _end(conn, merchant_id, experiment_id, now)
    return await get(pool, merchant_id, experiment_id)


async def _end(conn: asyncpg.Connection, merchant_id: UUID, experiment_id: UUID,
               now: datetime) -> dict[str, Any]:  # fmt: skip
    experiment = found(
        await repo.get(conn, merchant_id, experiment_id, lock=True), "experiment",
        "experiment_id",
    )  # fmt: skip
    if experiment["status"] == "running":
        experiment = {**experiment, "status": "ended", "ended_at": now}
        frozen = await _compute(conn, experiment, now)
        await repo.end(conn, experiment_id, frozen, now)
    return experiment


async def promote(
    pool: asyncpg.Pool, redis: RedisClient, merchant_id: UUID, experiment_id: UUID, variant: str,
    now: datetime,
) -> dict[str, Any]:  # fmt: skip
    """End the experiment (if running) and make the variant's rules the program's next rules
    version. Promoting the same variant again changes nothing; another one is a 409."""
    async with transaction(pool) as conn:
        experiment = await _end(conn, merchant_id, experiment_id, now)
        chosen = next((v for v in experiment["variants"] if v["key"] == variant), None)
        if chosen is None:
            raise InvalidInput(f"no variant {variant!r} in this experiment", field="body.variant")
        promoted = experiment["promoted_variant"]
        if promoted is not None and promoted != variant:
            raise Conflict(f"variant {promoted} was already promoted", field="body.variant")
        if promoted is None:
            version = await rules_repo.save_rules(conn, experiment["program_id"], chosen["rules"])
            await repo.set_promoted(conn, experiment_id, variant, version)
    if promoted is None:  # the cookie lifetime may follow a new attribution window
        await links_service.republish_program_links(pool, redis, experiment["program_id"])
    return await get(pool, merchant_id, experiment_id)
