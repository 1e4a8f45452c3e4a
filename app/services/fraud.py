"""Fraud work outside the flusher: the preview of a proposed rule set, and the sweep that flags
click floods for the statistics.

- `preview` evaluates proposed fraud rules over a program's recent conversions with the same
  fact-gathering and rules as processing (app/services/processing.py, app/attribution/fraud.py),
  inside a READ ONLY transaction: it cannot write, and answers what would change.
- `flag_click_floods` (the scheduler, every minute) flags the clicks of each program's floods
  so the statistics show them apart. Conversions do not wait for it: processing counts the flood
  around its own click when it decides.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from app.attribution import fraud
from app.attribution.fraud import FraudRules
from app.pipeline.events import ConversionEvent
from app.services.processing import Device, gather_facts
from app.services.programs import get_program
from app.services.tx import transaction
from app.storage import fraud as fraud_repo
from app.storage.rules import current_rules

PREVIEW_MAX_CONVERSIONS = 5_000
PREVIEW_EXAMPLES = 20
# Clicks reach PostgreSQL within seconds; the sweep leaves the last two minutes for next time.
SWEEP_LAG = timedelta(minutes=2)
# A program never swept before is looked at from this far back.
FIRST_SWEEP = timedelta(days=1)


async def preview(
    pool: asyncpg.Pool, merchant_id: UUID, program_id: UUID, proposed: FraudRules, days: int,
    now: datetime,
) -> dict[str, Any]:  # fmt: skip
    """What the proposed rules would decide for the program's attributed conversions of the
    last `days` days, beside what was decided: counts per action and per rule, and examples of
    conversions whose outcome would change. Writes nothing."""
    await get_program(pool, merchant_id, program_id)
    since = now - timedelta(days=days)
    current_counts = {a: 0 for a in ("none", "flag", "hold", "reject")}
    proposed_counts = dict(current_counts)
    per_rule: dict[str, dict[str, int]] = {}
    examples: list[dict[str, Any]] = []
    changed = 0
    async with transaction(pool) as conn:
        await conn.execute("SET TRANSACTION READ ONLY")
        version, rules = (await current_rules(conn, [program_id]))[program_id]
        trial = rules.model_copy(update={"fraud": proposed})
        rows = await fraud_repo.recent_conversions(
            conn, merchant_id, program_id, since, PREVIEW_MAX_CONVERSIONS + 1
        )
        truncated = len(rows) > PREVIEW_MAX_CONVERSIONS
        for row in rows[:PREVIEW_MAX_CONVERSIONS]:
            event = _as_event(merchant_id, row)
            click_id = row["attributed_click_id"]
            click = await fraud_repo.click_details(conn, click_id) if click_id else None
            device = Device(row["visitor_id"], row["ip_hash"], row["ip_prefix"], row["user_agent"])
            facts = await gather_facts(
                conn, trial, event, row["advocate_id"], click, device,
                int(row["advocate_reward"]), rules.currency, until=row["occurred_at"],
            )  # fmt: skip
            decision = fraud.evaluate(proposed, facts.advocate, facts.conversion)
            outcome = decision.outcome
            current_counts[row["fraud_action"]] += 1
            proposed_counts[outcome] += 1
            for finding in decision.findings:
                bucket = per_rule.setdefault(finding.rule, {"flag": 0, "hold": 0, "reject": 0})
                bucket[finding.action.value] += 1
            if outcome != row["fraud_action"]:
                changed += 1
                if len(examples) < PREVIEW_EXAMPLES:
                    examples.append({
                        "conversion_id": row["id"], "occurred_at": row["occurred_at"],
                        "current_action": row["fraud_action"], "proposed_action": outcome,
                        "findings": [f.as_json() for f in decision.findings],
                    })  # fmt: skip
    return {
        "program_id": program_id, "rules_version": version, "days": days,
        "conversions": min(len(rows), PREVIEW_MAX_CONVERSIONS), "truncated": truncated,
        "current": current_counts, "proposed": proposed_counts, "changed": changed,
        "per_rule": per_rule, "examples": examples,
    }  # fmt: skip


def _as_event(merchant_id: UUID, row: dict[str, Any]) -> ConversionEvent:
    return ConversionEvent(
        id=row["id"], merchant_id=merchant_id, event_id=row["event_id"], type=row["type"],
        occurred_at=row["occurred_at"], received_at=row["received_at"],
        customer_id=row["customer_id"], customer_email_hash=row["customer_email_hash"],
        customer_email_canonical=row["customer_email_canonical"],
        customer_email_near=tuple(row["customer_email_near"] or ()),
        customer_email_disposable=bool(row["customer_email_disposable"]),
        amount_minor=row["amount_minor"], currency=row["currency"],
    )  # fmt: skip


async def flag_click_floods(pool: asyncpg.Pool, now: datetime) -> int:
    """Flag the clicks of floods stored since the last sweep, per program with the rule on.
    Returns how many clicks were flagged."""
    flagged = 0
    end = now - SWEEP_LAG
    programs = await fraud_repo.active_programs(pool)
    rules = await current_rules(pool, [p for p, _ in programs])
    for program, merchant in programs:
        if program not in rules:
            continue
        rule = rules[program][1].fraud.click_flood
        if rule.action == fraud.RuleAction.OFF:
            continue
        async with transaction(pool) as conn:
            last = await fraud_repo.swept_until(conn, program) or (end - FIRST_SWEEP)
            # Back far enough that a flood straddling the last sweep's end is seen whole.
            start = last - timedelta(minutes=2 * rule.minutes)
            flagged += await fraud_repo.mark_floods(
                conn, merchant, program, start, end, rule.minutes, rule.max_clicks
            )
    return flagged
